"""The only module that trains: Keras 3 (TensorFlow backend), nothing of the DB, Celery or Optuna.

``train`` takes several Adam configurations at once so that a later version can pack K small
trials into one pass; today it fits them one after another.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tuner_service.adam import AdamConfig
from tuner_service.schemas import DataDescription, JobCreate, ModelSpec, TargetKind
from workers.data import Dataset, SplitSpec, load_dataset, source_for
from workers.models import model_source, outputs_probabilities

# Called after each epoch with (epoch starting at 1, objective value); returns why training
# must stop now ("pruned", "cancelled"), or None to go on.
EpochHook = Callable[[int, float], str | None]


class SetupError(Exception):
    """The data or the model cannot be set up: no Adam configuration can fix that, so the
    search must stop (a failure of one configuration is a TrainResult instead)."""


class TrialSetupError(Exception):
    """The model cannot be built with this trial's sampled hyperparameters (a HyperModel's):
    the trial fails, the search goes on with other values."""


@dataclass(frozen=True)
class TrainSpec:
    """Everything about a training run except the optimizer."""

    model: ModelSpec
    dataset: SplitSpec
    data: DataDescription
    epochs: int
    batch_size: int
    metric: str
    seed: int
    # Initial weights and batch order; None: ``seed``. Confirmation re-trains with fresh ones
    # on the same split (which ``seed`` alone draws).
    init_seed: int | None = None
    # An uploaded data set's file on local disk (the worker's cache); None for built-ins.
    data_file: Path | None = None
    # The same for an uploaded model file.
    model_file: Path | None = None
    # A model built here (a plugin's) with more parameters than this is refused.
    max_params: int | None = None

    @classmethod
    def from_job(cls, spec: JobCreate, data: DataDescription, *,
                 init_seed: int | None = None, data_file: Path | None = None,
                 model_file: Path | None = None, max_params: int | None = None
                 ) -> TrainSpec:
        """The training part of a job spec, on its data set."""
        return cls(model=spec.model, dataset=spec.dataset, data=data, epochs=spec.budget.epochs,
                   batch_size=spec.budget.batch_size, metric=spec.objective.metric,
                   seed=spec.seed, init_seed=init_seed, data_file=data_file,
                   model_file=model_file, max_params=max_params)


@dataclass(frozen=True)
class TrainResult:
    """How one configuration's training ended: complete, pruned (stopped early) or fail."""

    state: str
    value: float | None
    reason: str | None
    epochs_run: int
    history: tuple[float, ...] = field(default_factory=tuple)


def make_optimizer(config: AdamConfig) -> keras.optimizers.Adam:
    """Adam from the five numbers; decay becomes lr / (1 + decay * step) (Keras 2 semantics)."""
    learning_rate: Any = config.learning_rate
    if config.decay > 0:
        learning_rate = keras.optimizers.schedules.InverseTimeDecay(
            initial_learning_rate=config.learning_rate, decay_steps=1, decay_rate=config.decay
        )
    return keras.optimizers.Adam(
        learning_rate=learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
        epsilon=config.epsilon,
    )


def compile_for(model: keras.Model, target: TargetKind, optimizer: keras.optimizers.Optimizer
                ) -> None:
    """Loss and metrics follow the target alone: sparse cross-entropy and accuracy for
    classes (val_accuracy; on logits, or on probabilities when the model's last layer applies
    softmax), mean squared error and mean absolute error for values
    (val_mean_absolute_error). Whatever the model was compiled with before is replaced."""
    loss, metrics = _LOSS_AND_METRICS[target]
    model.compile(optimizer=optimizer, loss=loss(not outputs_probabilities(model)),
                  metrics=list(metrics))


_LOSS_AND_METRICS: dict[str, tuple[Callable[[bool], keras.losses.Loss], tuple[str, ...]]] = {
    "classes": (lambda logits: keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
                ("accuracy",)),
    "values": (lambda _logits: keras.losses.MeanSquaredError(), ("mean_absolute_error",)),
}


def train(spec: TrainSpec, configs: Sequence[AdamConfig], hooks: Sequence[EpochHook]
          ) -> list[TrainResult]:
    """Train the model once per configuration; ``hooks[i]`` sees configuration i's epochs."""
    return [_train_one(spec, config, hook) for config, hook in zip(configs, hooks, strict=True)]


def _train_one(spec: TrainSpec, config: AdamConfig, hook: EpochHook) -> TrainResult:
    data, model = _set_up(spec, config)
    compile_for(model, spec.data.target.kind, make_optimizer(config))
    watcher = _EpochWatcher(spec.metric, hook)
    try:
        model.fit(
            data.x_train, data.y_train, batch_size=spec.batch_size, epochs=spec.epochs,
            validation_data=(data.x_val, data.y_val), callbacks=[watcher], verbose=0,
        )
    except tf.errors.ResourceExhaustedError as error:
        return TrainResult("fail", None, f"out of memory: {error.message[:200]}",
                           len(watcher.history), tuple(watcher.history))
    return watcher.result()


def _set_up(spec: TrainSpec, config: AdamConfig) -> tuple[Dataset, keras.Model]:
    try:
        data = load_dataset(source_for(spec.data, spec.data_file), spec.dataset, spec.seed)
        keras.backend.clear_session()
        # The same seed for every trial: each starts from the same weights and batch order,
        # so trials differ only in their Adam numbers (and a HyperModel's searched values).
        keras.utils.set_random_seed(spec.seed if spec.init_seed is None else spec.init_seed)
        source = model_source(spec.model, spec.model_file, config.model_values)
        model = source.build(data.input_shape, spec.data.target.n_outputs)
        n_params = model.count_params()
    except OSError:
        raise  # a download or disk problem may pass: not a reason to stop the search
    except Exception as error:
        problem = f"cannot set up {spec.model.label} on {spec.data.name}: " \
                  f"{type(error).__name__}: {error}"
        if config.model_values:  # these sampled hyperparameters fail; others may build
            raise TrialSetupError(problem) from error
        raise SetupError(problem) from error
    if spec.max_params is not None and n_params > spec.max_params:
        problem = (f"{spec.model.label} has {n_params:,} parameters, over the limit of "
                   f"{spec.max_params:,} (TUNER_MAX_MODEL_PARAMS)")
        raise (TrialSetupError if config.model_values else SetupError)(problem)
    return data, model


class _EpochWatcher(keras.callbacks.Callback):
    """Reports each epoch's objective, and stops on divergence, pruning or cancellation."""

    def __init__(self, metric: str, hook: EpochHook) -> None:
        super().__init__()
        self._metric = metric
        self._hook = hook
        self.history: list[float] = []
        self._stopped: tuple[str, str] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss, value = float(logs.get("loss", math.nan)), float(logs.get(self._metric, math.nan))
        if not (math.isfinite(loss) and math.isfinite(value)):
            bad = "loss" if not math.isfinite(loss) else self._metric
            self._stop("fail", f"diverged: {bad} is {logs.get(bad)} at epoch {epoch + 1}")
            return
        self.history.append(value)
        reason = self._hook(epoch + 1, value)
        if reason is not None:
            self._stop("pruned", reason)

    def _stop(self, state: str, reason: str) -> None:
        self._stopped = (state, reason)
        self.model.stop_training = True

    def result(self) -> TrainResult:
        """The outcome once fit has returned."""
        history = tuple(self.history)
        if self._stopped is not None:
            state, reason = self._stopped
            return TrainResult(state, None, reason, len(history), history)
        if not history:
            return TrainResult("fail", None, "no epoch finished", 0, history)
        return TrainResult("complete", history[-1], None, len(history), history)


def configure_devices() -> list[str]:
    """Let TensorFlow grow GPU memory as needed (one worker process per GPU); list GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]
