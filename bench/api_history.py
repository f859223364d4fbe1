"""Made-up jobs for bench/api_store.py: a job's spec and its trial history, drawn from a seeded
``random.Random`` (the same seed gives the same store).

Each job gets a smooth objective over Adam's numbers (best near one learning rate), per-epoch
learning curves that level off, a few diverged trials (more at high learning rates), pruned
trials when its pruner is on, and two workers whose clocks give the trials' start and end times.
"""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner_service.schemas import JobCreate
from tuner_service.search_space import baseline_params, config_from_params, optuna_distributions
from tuner_service.studies import BASELINE_ATTR, FAIL_REASON_ATTR, WORKER_ATTR

EPOCHS = 10
MODELS = [("logistic_regression", "digits"), ("logistic_regression", "mnist"), ("mlp", "mnist"),
          ("mlp", "fashion_mnist"), ("cnn", "cifar10"), ("cnn", "fashion_mnist")]


def job_spec(rng: random.Random, k: int) -> JobCreate:
    """Job number ``k``: a built-in model and data set, a budget of 20-200 trials and a mix of
    samplers, pruners, objectives and fixed numbers."""
    model, dataset = rng.choice(MODELS)
    space: dict[str, float] = {}
    if rng.random() < 0.15:
        space["beta_2"] = 0.999  # fixed numbers leave their parameter out of the study
    if rng.random() < 0.10:
        space["decay"] = 0.0
    return JobCreate.model_validate({
        "name": f"bench-{k:03d}-{model}-{dataset}", "model": {"builtin": model},
        "dataset": {"builtin": dataset}, "search_space": space,
        "objective": {"metric": "val_accuracy" if rng.random() < 0.2 else "val_loss"},
        "budget": {"n_trials": rng.randint(20, 200), "epochs": EPOCHS},
        "sampler": rng.choice(["tpe", "tpe", "tpe", "random", "cmaes"]),
        "pruner": rng.choice(["median", "median", "median", "hyperband", "none"]), "seed": k,
        # The history's studies are filled by the bench itself, trial by trial.
        "warm_start": "off",
    })


@dataclasses.dataclass
class _Surface:
    """A job's made-up objective: best near one learning rate, worse with a large epsilon,
    1 - beta_2 or decay; learning curves that level off at the final value."""

    rng: random.Random
    spec: JobCreate
    best_lr: float = 0.0
    floor: float = 0.0
    span: float = 0.0

    def __post_init__(self) -> None:
        self.best_lr = self.rng.uniform(-3.2, -1.8)
        self.floor, self.span = self.rng.uniform(0.05, 0.4), self.rng.uniform(0.8, 2.0)

    def quality(self, params: dict[str, Any]) -> float:
        adam = config_from_params(params, self.spec.search_space)
        miss = (math.log10(adam.learning_rate) - self.best_lr) ** 2 / 1.5
        miss += 0.3 * max(0.0, math.log10(adam.epsilon) + 4)
        miss += 0.5 * max(0.0, math.log10(1 - adam.beta_2) + 1.5) + 30 * adam.decay
        return math.exp(-miss)

    def curve(self, quality: float, epochs: int) -> dict[int, float]:
        loss = self.floor + self.span * (1 - quality) * self.rng.lognormvariate(0, 0.05)
        first = loss + self.span * self.rng.uniform(0.5, 1.0)
        values = {}
        for epoch in range(1, epochs + 1):
            shape = (math.exp(-3 * (epoch - 1) / (EPOCHS - 1)) - math.exp(-3)) / (1 - math.exp(-3))
            noise = self.rng.gauss(0, 0.01) if epoch < EPOCHS else 0.0
            value = (loss + (first - loss) * shape) * (1 + noise)
            values[epoch] = value if self.spec.objective.minimize else max(0.0, 1 - value / 3)
        return values


def job_trials(rng: random.Random, spec: JobCreate, status: str, created: datetime,
               now: datetime) -> tuple[list[FrozenTrial], datetime, datetime]:
    """A job's trials in order (trial 0: the paper defaults), with start and end times."""
    n = spec.budget.n_trials
    ended = n if status == "succeeded" else rng.randint(max(1, n // 5), 4 * n // 5)
    running = min(n - ended, rng.randint(1, 2)) if status == "running" else 0
    surface, dists = _Surface(rng, spec), optuna_distributions(spec.search_space)
    workers = [f"bench-node-{w + 1}:{rng.randint(1000, 60000)}" for w in range(2)]
    epoch_s = rng.uniform(0.3, 3.0)
    trials, clocks = [], [0.0, 0.0]
    for number in range(ended + running):
        params = baseline_params(spec.search_space) if number == 0 else _sample(rng, dists)
        assert params is not None
        state, curve, attrs = _outcome(rng, spec, surface, params, number, number >= ended)
        w = clocks.index(min(clocks))
        attrs[WORKER_ATTR] = workers[w]
        took = len(curve) * epoch_s * rng.uniform(0.9, 1.1) + 1.0
        offsets = (clocks[w], None if state == TrialState.RUNNING else clocks[w] + took)
        clocks[w] += took + 0.05
        scored = state in (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: its last epoch
        trial = optuna.trial.create_trial(
            state=state, value=curve[max(curve)] if scored else None, params=params,
            distributions={k: dists[k] for k in params}, user_attrs=attrs,
            intermediate_values=curve)
        trial.number = number
        trials.append((trial, offsets))
    span = max(end for _, (_, end) in trials if end is not None) if ended else 0.0
    if status == "running":
        base, scale = now - timedelta(seconds=span + 5), 1.0
    else:
        base = created + timedelta(seconds=2)
        scale = min(1.0, (now - base).total_seconds() / 2 / max(span, 1.0))
    for trial, (begin, end) in trials:
        trial.datetime_start = _local(base + timedelta(seconds=begin * scale))
        trial.datetime_complete = None if end is None else _local(
            base + timedelta(seconds=end * scale))
    return [t for t, _ in trials], base, base + timedelta(seconds=span * scale)


def _outcome(rng: random.Random, spec: JobCreate, surface: _Surface, params: dict[str, Any],
             number: int, running: bool) -> tuple[TrialState, dict[int, float], dict[str, Any]]:
    """State, per-epoch values and user attributes of one trial."""
    quality = surface.quality(params)
    attrs: dict[str, Any] = {BASELINE_ATTR: True} if number == 0 else {}
    if running:
        return TrialState.RUNNING, surface.curve(quality, rng.randint(0, EPOCHS - 1)), attrs
    high_lr = params.get("learning_rate", 0.0) > 0.03
    if number > 0 and rng.random() < (0.15 if high_lr else 0.02):
        epoch = rng.randint(1, EPOCHS)
        attrs[FAIL_REASON_ATTR] = f"diverged: loss is nan at epoch {epoch}"
        return TrialState.FAIL, surface.curve(quality, epoch - 1), attrs
    if spec.pruner != "none" and number >= 5 and rng.random() < 0.6 * (1 - quality):
        return TrialState.PRUNED, surface.curve(quality, rng.randint(1, EPOCHS - 1)), attrs
    return TrialState.COMPLETE, surface.curve(quality, EPOCHS), attrs


def _sample(rng: random.Random, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Parameters as the sampler would draw them (decay only when switched on)."""
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = rng.choice(dist.choices)
        else:
            low, high = dist.low, dist.high  # type: ignore[attr-defined]
            params[name] = (math.exp(rng.uniform(math.log(low), math.log(high)))
                            if dist.log else rng.uniform(low, high))  # type: ignore[attr-defined]
    if params.get("decay_enabled") is False:
        params.pop("decay", None)
    return params


def _local(moment: datetime) -> datetime:
    """Optuna's trials carry naive local times."""
    return moment.astimezone().replace(tzinfo=None)

