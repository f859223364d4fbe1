"""The in-process methods of ``bench/quality.py``: what a user would run instead of the service.

Every method trains with the worker's own code (``workers.models``, ``workers.data``,
``workers.training.make_optimizer``): the same model, data split, initial weights and batch
order, so methods differ only in how they pick Adam's numbers. Each returns its trials in the
order they finished, until at least ``task.budget`` trial-epochs are spent.

The peers search the "typical ranges" of the design notes (adam.md) as a user writes them:
learning rate, epsilon and decay on a log scale, the betas linear (no 1 - beta trick, no "decay
off").
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Every task's share of the data that no method searches on (re-scoring measures on it).
HOLDOUT = 0.2
# The typical ranges of the design notes (adam.md), as (low, high).
LR, EPSILON, DECAY = (1e-5, 1e-1), (1e-10, 1.0), (1e-6, 1e-2)
BETA_1, BETA_2 = (0.5, 0.999), (0.9, 0.9999)
_DIVERGED_AT = re.compile(r"^diverged: .* at epoch (\d+)")


@dataclass(frozen=True)
class Task:
    """One benchmark problem: a built-in model on digits (less its holdout), and a budget of
    trial-epochs."""

    name: str
    model: dict[str, Any]
    epochs: int
    n_trials: int
    batch_size: int = 32
    dataset: dict[str, Any] = field(
        default_factory=lambda: {"builtin": "digits", "holdout": HOLDOUT})
    note: str = ""

    @property
    def budget(self) -> int:
        """B = n_trials x epochs trial-epochs."""
        return self.n_trials * self.epochs

    def job_spec(self, seed: int) -> dict[str, Any]:
        """The minimal service job: model, data, budget, seed; everything else defaulted."""
        return {"name": f"quality-{self.name}-{seed}", "model": dict(self.model),
                "dataset": dict(self.dataset), "seed": seed,
                "budget": {"n_trials": self.n_trials, "epochs": self.epochs,
                           "batch_size": self.batch_size}}


@dataclass(frozen=True)
class TrialLog:
    """One finished trial: the trial-epochs it cost and its per-epoch val_loss.

    ``full`` marks a trial that trained to the task's last epoch; only those have a value
    (its last val_loss), for every method alike, so a pruned trial's good early epoch never
    counts as a result.
    """

    epochs: int
    values: tuple[float, ...]
    full: bool
    params: dict[str, float] | None = None  # the five Adam numbers, where the method says

    @property
    def value(self) -> float | None:
        """The trial's result, or None when it stopped early or diverged."""
        return self.values[-1] if self.full and self.values else None


def sig6(value: float) -> float:
    """``value`` to 6 significant digits, as the JSON lines keep numbers."""
    return float(f"{value:.6g}")


def counted(logs: list[TrialLog], budget: int) -> list[TrialLog]:
    """The trials, in the order they ended, that ended within ``budget`` trial-epochs."""
    ends = itertools.accumulate(log.epochs for log in logs)
    return [log for log, end in zip(logs, ends, strict=True) if end <= budget]


def epochs_spent(n_values: int, state: str, reason: str | None) -> int:
    """Trial-epochs of a trial: a diverged epoch ran too, though it reported no value."""
    match = _DIVERGED_AT.match(reason or "") if state == "fail" else None
    return int(match.group(1)) if match else n_values


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C++ logging of TensorFlow (it writes to fd 2, around Python's sys.stderr)."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_keras() -> None:
    """Import TensorFlow, Keras and KerasTuner once, without their start-up chatter."""
    import optuna

    with quiet_stderr():
        import keras  # noqa: F401
        import keras_tuner  # noqa: F401
        import tensorflow as tf

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", module="keras_tuner")


def train_spec(task: Task, seed: int) -> Any:
    """The worker's TrainSpec of the task's minimal job (``workers.training.TrainSpec``)."""
    from tuner_service.datasets.catalog import BUILTINS
    from tuner_service.schemas import JobCreate
    from workers.training import TrainSpec

    spec = JobCreate.model_validate(task.job_spec(seed))
    return TrainSpec.from_job(spec, BUILTINS[spec.dataset.match[1]])


def _log(result: Any, config: Any) -> TrialLog:
    return TrialLog(epochs=epochs_spent(result.epochs_run, result.state, result.reason),
                    values=tuple(result.history), full=result.state == "complete",
                    params=config.as_dict())


def run_defaults(task: Task, seed: int, options: dict[str, Any]) -> list[TrialLog]:
    """Adam's paper defaults, one trial: the bar every tuner must clear."""
    from tuner_service.adam import PAPER_DEFAULTS
    from workers.training import train

    (result,) = train(train_spec(task, seed), [PAPER_DEFAULTS], [lambda e, v: None])
    return [_log(result, PAPER_DEFAULTS)]


# ----------------------------------------------------------------------------- Optuna
Sample = Callable[[Any], Any]  # optuna.Trial -> AdamConfig


def _run_study(study: Any, sample: Sample, task: Task, seed: int,
               prune: bool) -> list[TrialLog]:
    """ask/train/tell until the budget is spent (study.optimize cannot count trial-epochs)."""
    import optuna

    from workers.training import train

    spec, logs = train_spec(task, seed), []
    while sum(log.epochs for log in logs) < task.budget:
        trial = study.ask()

        def hook(epoch: int, value: float, trial: optuna.Trial = trial) -> str | None:
            if not prune:
                return None
            trial.report(value, epoch)
            return "pruned" if trial.should_prune() else None

        config = sample(trial)
        (result,) = train(spec, [config], [hook])
        state = {"complete": optuna.trial.TrialState.COMPLETE,
                 "pruned": optuna.trial.TrialState.PRUNED}.get(result.state,
                                                              optuna.trial.TrialState.FAIL)
        study.tell(trial, result.value if result.state == "complete" else None, state=state)
        logs.append(_log(result, config))
    return logs


def run_optuna_tpe(task: Task, seed: int, options: dict[str, Any]) -> list[TrialLog]:
    """A hand-written Optuna script: TPESampler(seed), the typical ranges, no pruning.

    No pruning because the minimal script from Optuna's Keras example (return the final
    val_loss) never reports intermediate values; pruning needs extra code users often skip.
    """
    import optuna

    from tuner_service.adam import AdamConfig

    def sample(trial: optuna.Trial) -> AdamConfig:
        return AdamConfig(
            learning_rate=trial.suggest_float("learning_rate", *LR, log=True),
            beta_1=trial.suggest_float("beta_1", *BETA_1),
            beta_2=trial.suggest_float("beta_2", *BETA_2),
            epsilon=trial.suggest_float("epsilon", *EPSILON, log=True),
            decay=trial.suggest_float("decay", *DECAY, log=True),
        )

    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    return _run_study(study, sample, task, seed, prune=False)


_PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
            "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
            "wilcoxon": "WilcoxonPruner"}
_SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler",
             "qmc": "QMCSampler"}


def run_service_inproc(task: Task, seed: int, options: dict[str, Any]) -> list[TrialLog]:
    """The service's search logic in this process, with knobs its job spec does not expose.

    Same as one service worker: the job spec (with ``options["spec"]`` merged in), the paper
    defaults enqueued as trial 0, ``suggest_config`` on the spec's space, and
    ``make_sampler``/``make_pruner`` unless ``options["sampler"]`` / ``options["pruner"]``
    name an Optuna class and its arguments, e.g. ``{"name": "tpe", "multivariate": true}``.
    """
    import optuna

    from tuner_service.schemas import JobCreate
    from tuner_service.search_space import baseline_params, suggest_config
    from tuner_service.studies import make_pruner, make_sampler

    spec = JobCreate.model_validate(merge(task.job_spec(seed), options.get("spec", {})))
    sampler = make_sampler(spec, seed)
    if "sampler" in options:
        kwargs = dict(options["sampler"])
        sampler = getattr(optuna.samplers, _SAMPLERS[kwargs.pop("name")])(seed=seed, **kwargs)
    pruner = make_pruner(spec)
    if "pruner" in options:
        kwargs = dict(options["pruner"])
        name = kwargs.pop("name")
        if name == "hyperband":
            kwargs.setdefault("max_resource", task.epochs)
        pruner = getattr(optuna.pruners, _PRUNERS[name])(**kwargs)
        if options.get("patience") is not None:
            pruner = optuna.pruners.PatientPruner(pruner, patience=options["patience"])
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    baseline = baseline_params(spec.search_space)
    if baseline is not None:
        study.enqueue_trial(baseline)
    return _run_study(study, lambda trial: suggest_config(trial, spec.search_space), task, seed,
                      prune=True)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested dicts merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ------------------------------------------------------------------------------ KerasTuner
def _epoch_logger(epochs: int) -> Any:
    """A Keras callback whose ``logs`` get one TrialLog per fit (one KerasTuner trial).

    For Hyperband one fit is one round of a bracket: it resumes from the previous round's
    weights at ``initial_epoch`` and costs only the epochs it runs.
    """
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.logs: list[TrialLog] = []
            self._values: list[float] = []
            self._last_epoch = -1

        def __deepcopy__(self, memo: dict[int, Any]) -> EpochLogger:
            # KerasTuner deep-copies search callbacks per trial: keep logging into this one.
            return self

        @property
        def spent(self) -> int:
            return sum(log.epochs for log in self.logs)

        def on_train_begin(self, logs: Any = None) -> None:
            self._values, self._last_epoch = [], -1

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._values.append(float((logs or {}).get("val_loss", math.nan)))
            self._last_epoch = epoch

        def on_train_end(self, logs: Any = None) -> None:
            finite = tuple(v for v in self._values if math.isfinite(v))
            full = self._last_epoch + 1 == epochs and len(finite) == len(self._values)
            self.logs.append(TrialLog(len(self._values), finite, full))

        def attach(self, values: dict[str, Any]) -> None:
            """Name the Adam numbers of the trial that just ended."""
            if self.logs and self.logs[-1].params is None:
                params = {k: float(v) for k, v in values.items() if not k.startswith("tuner/")}
                self.logs[-1] = dataclasses.replace(self.logs[-1], params=params)

    return EpochLogger()


class _BudgetSpent(Exception):
    """Raised before a KerasTuner trial starts once the budget is spent (ends ``search``)."""


def run_keras_tuner(kind: str, task: Task, seed: int) -> list[TrialLog]:
    """KerasTuner's RandomSearch, BayesianOptimization or Hyperband on the same five numbers."""
    import keras
    import keras_tuner as kt
    from pydantic import TypeAdapter

    from tuner_service.adam import AdamConfig
    from tuner_service.schemas import BuiltinDatasetSpec, ModelSpec
    from workers.data import BuiltinSource, load_dataset
    from workers.models import build_model
    from workers.training import make_optimizer

    dataset = BuiltinDatasetSpec.model_validate(task.dataset)
    data = load_dataset(BuiltinSource(dataset.builtin), dataset, seed)
    model_spec = TypeAdapter(ModelSpec).validate_python(task.model)

    def build(hp: kt.HyperParameters) -> keras.Model:
        config = AdamConfig(
            learning_rate=hp.Float("learning_rate", *LR, sampling="log"),
            beta_1=hp.Float("beta_1", *BETA_1),
            beta_2=hp.Float("beta_2", *BETA_2),
            epsilon=hp.Float("epsilon", *EPSILON, sampling="log"),
            decay=hp.Float("decay", *DECAY, sampling="log"),
        )
        # Same initial weights and batch order as the service's trials (KerasTuner's own
        # sampling uses its private RNG, so re-seeding here does not repeat configurations).
        keras.utils.set_random_seed(seed)
        model = build_model(model_spec, data.input_shape, 10)  # the built-ins have 10 classes
        model.compile(optimizer=make_optimizer(config), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    epoch_log = _epoch_logger(task.epochs)

    class Budgeted(_tuner_class(kind)):  # type: ignore[misc]
        def on_trial_begin(self, trial: Any) -> None:
            if epoch_log.spent >= task.budget:
                raise _BudgetSpent
            super().on_trial_begin(trial)

        def on_trial_end(self, trial: Any) -> None:
            epoch_log.attach(trial.hyperparameters.values)
            super().on_trial_end(trial)

    # KerasTuner treats seed 0 as "no seed" (seed or random.randint(...)): shift by one.
    common = {"objective": "val_loss", "seed": seed + 1, "overwrite": True}
    if kind == "hyperband":
        # max_epochs = the task's epochs; iterations without end, the budget stops it.
        sizing = {"max_epochs": task.epochs, "hyperband_iterations": 1000}
    else:
        sizing = {"max_trials": 100 * task.n_trials}
    with tempfile.TemporaryDirectory(prefix="kt-") as directory:
        tuner = Budgeted(build, directory=directory, project_name=kind, **common, **sizing)
        with contextlib.suppress(_BudgetSpent):
            tuner.search(data.x_train, data.y_train, epochs=task.epochs,
                         batch_size=task.batch_size, validation_data=(data.x_val, data.y_val),
                         callbacks=[epoch_log, keras.callbacks.TerminateOnNaN()],
                         verbose=0)
    return epoch_log.logs


def _tuner_class(kind: str) -> type:
    import keras_tuner as kt

    return {"random": kt.RandomSearch, "bayes": kt.BayesianOptimization,
            "hyperband": kt.Hyperband}[kind]


PEERS: dict[str, Callable[[Task, int, dict[str, Any]], list[TrialLog]]] = {
    "defaults": run_defaults,
    "kt_random": lambda task, seed, _: run_keras_tuner("random", task, seed),
    "kt_bayes": lambda task, seed, _: run_keras_tuner("bayes", task, seed),
    "kt_hyperband": lambda task, seed, _: run_keras_tuner("hyperband", task, seed),
    "optuna_tpe": run_optuna_tpe,
    "service_inproc": run_service_inproc,
}
# The tools a user would pick instead of the service (the "peers" the service is held to).
PEER_METHODS = ("kt_random", "kt_bayes", "kt_hyperband", "optuna_tpe")
