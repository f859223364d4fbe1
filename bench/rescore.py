"""Re-scoring for ``bench/quality.py``: what a method's recommendation is worth on fresh ground.

A search's best value flatters it (the winner's curse): it is the luckiest of many draws on
one validation split with one set of initial weights. So every method names one configuration,
and the benchmark re-trains it from scratch with ``RESCORE_SEEDS`` (initial weights and batch
order no method saw) on the search's own training split, then measures its cross-entropy on
the data set's holdout (which no method searched on) and, to show the curse, on the search's
validation split.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.peers import Task, TrialLog, counted, sig6, train_spec

RESCORE_SEEDS = (10_001, 10_002, 10_003)


@dataclass(frozen=True)
class Recommendation:
    """The configuration a method would hand its user, and where it came from."""

    params: dict[str, float]
    source: str  # "best trial", "paper defaults", "confirmation" or "search best"
    confirmed_mean: float | None = None  # the service's confirmation, on the validation split
    confirmed_sd: float | None = None
    differs_from_best: bool | None = None  # confirmation chose another than the search's best


def best_trial(logs: list[TrialLog], budget: int) -> Recommendation | None:
    """The best full trial ended within the budget (a peer's answer); None if there is none."""
    full = [(log.value, log.params) for log in counted(logs, budget)
            if log.value is not None and log.params is not None]
    if not full:
        return None
    _, params = min(full, key=lambda pair: pair[0])  # the first of equals, as best_so_far
    return Recommendation(params, "best trial")


def paper_defaults() -> Recommendation:
    """What ``defaults`` recommends whatever its one trial did."""
    from tuner_service.adam import PAPER_DEFAULTS

    return Recommendation(PAPER_DEFAULTS.as_dict(), "paper defaults")


def from_report(report: dict[str, Any]) -> Recommendation | None:
    """The service's answer: its confirmed recommendation when the report has one, else the
    search's best trial."""
    best, recommended = report.get("best"), report.get("recommended")
    if recommended and recommended.get("params"):
        differs = (report.get("confirmation") or {}).get("differs_from_search_best")
        if differs is None and best is not None:
            differs = recommended.get("source_trial") != best.get("trial_number")
        return Recommendation(dict(recommended["params"]), "confirmation",
                              _number(recommended.get("mean")), _number(recommended.get("sd")),
                              differs)
    if best and best.get("params"):
        return Recommendation(dict(best["params"]), "search best")
    return None


def rescored_fields(task: Task, split_seed: int,
                    recommendation: Recommendation | None) -> dict[str, Any]:
    """What a run line adds: the recommendation, its re-scoring, the service's confirmation
    figures and check (null for other methods), and the seconds re-scoring took."""
    start = time.perf_counter()
    line: dict[str, Any] = {
        "holdout": task.dataset.get("holdout", 0.0), "recommended": None,
        "recommended_from": None, "confirmed_mean": None, "confirmed_sd": None,
        "differs_from_best": None, "rescore_seeds": list(RESCORE_SEEDS), "test_losses": [],
        "test_loss": None, "fresh_val_losses": [], "fresh_val_loss": None}
    if recommendation is not None:
        line.update(recommended={k: sig6(v) for k, v in recommendation.params.items()},
                    recommended_from=recommendation.source,
                    confirmed_mean=recommendation.confirmed_mean,
                    confirmed_sd=recommendation.confirmed_sd,
                    differs_from_best=recommendation.differs_from_best,
                    **rescore(task, split_seed, recommendation.params))
    line["rescore_seconds"] = round(time.perf_counter() - start, 1)
    line["within_2sd"] = within_2_sd(line)
    return line


def rescore(task: Task, split_seed: int, params: dict[str, float]) -> dict[str, Any]:
    """Re-train ``params`` once per ``RESCORE_SEEDS`` on the split of ``split_seed``; the
    losses on the holdout (``test_losses``) and on the search's validation split, and means
    (None when a re-training diverged)."""
    scores = [_fit_and_score(task, split_seed, seed, params) for seed in RESCORE_SEEDS]
    val, test = [_finite(v) for v, _ in scores], [_finite(t) for _, t in scores]
    return {"rescore_seeds": list(RESCORE_SEEDS),
            "test_losses": test, "test_loss": _mean(test),
            "fresh_val_losses": val, "fresh_val_loss": _mean(val)}


def within_2_sd(line: dict[str, Any]) -> bool | None:
    """Is the service's confirmed mean within 2 of its sds of a fresh re-training's mean
    validation loss? None when there is no confirmation (or no fresh value) to compare."""
    mean, sd, fresh = line.get("confirmed_mean"), line.get("confirmed_sd"), \
        line.get("fresh_val_loss")
    if mean is None or sd is None or fresh is None:
        return None
    return bool(abs(fresh - mean) <= 2 * sd)


def _fit_and_score(task: Task, split_seed: int, init_seed: int,
                   params: dict[str, float]) -> tuple[float, float]:
    """(validation loss, holdout loss) after training ``task.epochs`` from scratch, built
    as the worker builds a trial (``workers.training``) but keeping the fitted model."""
    import keras

    from tuner_service.adam import PARAM_NAMES, AdamConfig
    from workers.data import load_dataset, load_holdout, source_for
    from workers.models import build_model
    from workers.training import make_optimizer

    spec = train_spec(task, split_seed)
    source = source_for(spec.data)
    data = load_dataset(source, spec.dataset, split_seed)
    keras.backend.clear_session()
    keras.utils.set_random_seed(init_seed)
    model = build_model(spec.model, data.input_shape, spec.data.target.n_outputs)
    model.compile(optimizer=make_optimizer(AdamConfig(**{k: params[k] for k in PARAM_NAMES})),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=spec.batch_size, epochs=spec.epochs,
              callbacks=[keras.callbacks.TerminateOnNaN()], verbose=0)
    x_test, y_test = load_holdout(source, spec.dataset)
    return (_loss(model.evaluate(data.x_val, data.y_val, verbose=0)),
            _loss(model.evaluate(x_test, y_test, verbose=0)))


def _loss(result: Any) -> float:
    return float(result[0] if isinstance(result, list) else result)


def _finite(value: float) -> float | None:
    return sig6(value) if math.isfinite(value) else None


def _number(value: Any) -> float | None:
    return None if value is None else sig6(float(value))


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None when any value is missing: a diverged seed sinks the configuration."""
    if not values or any(v is None for v in values):
        return None
    return sig6(statistics.fmean(v for v in values if v is not None))
