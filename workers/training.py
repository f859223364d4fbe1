"""The only module that trains: Keras 3 (TensorFlow backend), nothing of the DB, Celery or Optuna.

``train`` takes several Adam configurations at once: one is fitted with Keras's ``fit``;
several are packed into one pass (``workers/packed.py``) when the model allows it
(``pack_problem``), else fitted one after another. Both paths see the same batches in the same
order (``packed.batch_order``), so a configuration's result does not depend on its company.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.schemas import DataDescription, JobCreate, ModelSpec, TargetKind
from workers.data import Dataset, SplitSpec, load_dataset, source_for
from workers.models import model_source, outputs_probabilities
from workers.packed import PackedTrainer, batch_order, unpackable

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
    """Train the model once per configuration; ``hooks[i]`` sees configuration i's epochs.

    Several configurations with the same model values are trained as one pack when
    ``pack_problem`` finds nothing against it; each result is the one training the
    configuration alone gives (the same batches in the same order), up to float32 round-off."""
    if len(configs) != len(hooks):
        raise ValueError("one hook per configuration")
    values = configs[0].model_values if configs else {}
    if (len(configs) > 1 and all(c.model_values == values for c in configs)
            and _pack_problem(spec, configs[0], len(configs)) is None):
        return _train_packed(spec, configs, hooks)
    return [_train_one(spec, config, hook) for config, hook in zip(configs, hooks, strict=True)]


def pack_problem(spec: TrainSpec) -> str | None:
    """Why this job's model cannot be trained as a pack, in a sentence for its user; None when
    it can. Builds the model and runs one packed step of two copies on two examples (once per
    job and process: the answer is kept)."""
    return _pack_problem(spec, PAPER_DEFAULTS, 2)


_PACK_PROBLEMS: dict[Hashable, str | None] = {}


def _pack_problem(spec: TrainSpec, config: AdamConfig, size: int) -> str | None:
    """The answer for this job and model values; asked first, it is found with a trainer of
    ``size`` copies, kept for the pack that asks (one build and one trace, not two)."""
    key = (_spec_key(spec), config.hyperparameters)
    if key not in _PACK_PROBLEMS:
        try:
            problem = _probe_packing(spec, config, size)
        except tf.errors.ResourceExhaustedError:
            # Too many copies for this device, which says nothing against packing: the pack
            # runs out of memory as a whole, and a smaller one asks again.
            return None
        if len(_PACK_PROBLEMS) >= 64:  # a worker serves a few jobs at a time
            _PACK_PROBLEMS.clear()
        _PACK_PROBLEMS[key] = problem
    return _PACK_PROBLEMS[key]


def _spec_key(spec: TrainSpec) -> Hashable:
    # TrainSpec is frozen but not hashable: its pydantic parts hold lists.
    return (spec.model.model_dump_json(), spec.dataset.model_dump_json(),
            spec.data.model_dump_json(), spec.seed, spec.init_seed, spec.data_file,
            spec.model_file, spec.max_params)


def _probe_packing(spec: TrainSpec, config: AdamConfig, size: int) -> str | None:
    try:
        data, model = _set_up(spec, config)
    except (SetupError, TrialSetupError) as error:
        return str(error)  # trained one by one, the same error reaches the caller there
    problem = unpackable(model)
    if problem is not None:
        return problem
    trainer = _packed(model, spec.data.target.kind, size)
    trainer.start([config] * size)
    problem = trainer.trial_run(data.x_train[:2], data.y_train[:2])
    if problem is None:
        _keep_trainer(spec, config, trainer)  # its traces serve the next pack of this size
    return problem


def _packed(model: keras.Model, target: TargetKind, size: int) -> PackedTrainer:
    loss, _ = _LOSS_AND_METRICS[target]
    return PackedTrainer(model, loss(not outputs_probabilities(model)), target, size)


# The last trainer built, by job, model values and size: the next pack of the same job and size
# only resets its copies and numbers, and skips building, tracing and their memory (one only:
# its variables hold 3 K copies of the weights).
_LAST_TRAINER: dict[Hashable, PackedTrainer] = {}


def _trainer_key(spec: TrainSpec, config: AdamConfig, size: int) -> Hashable:
    return (_spec_key(spec), config.hyperparameters, size)


def _keep_trainer(spec: TrainSpec, config: AdamConfig, trainer: PackedTrainer) -> None:
    _LAST_TRAINER.clear()
    _LAST_TRAINER[_trainer_key(spec, config, trainer.size)] = trainer


def _packed_set_up(spec: TrainSpec, configs: Sequence[AdamConfig]
                   ) -> tuple[Dataset, PackedTrainer]:
    trainer = _LAST_TRAINER.get(_trainer_key(spec, configs[0], len(configs)))
    if trainer is not None:
        return load_dataset(source_for(spec.data, spec.data_file), spec.dataset,
                            spec.seed), trainer
    data, model = _set_up(spec, configs[0])
    trainer = _packed(model, spec.data.target.kind, len(configs))
    _keep_trainer(spec, configs[0], trainer)
    return data, trainer


def _train_packed(spec: TrainSpec, configs: Sequence[AdamConfig],
                  hooks: Sequence[EpochHook]) -> list[TrainResult]:
    outcomes = [_Outcome(spec.metric, hook) for hook in hooks]
    try:
        data, trainer = _packed_set_up(spec, configs)
        trainer.start(configs)
        _run_pack(spec, data, trainer, outcomes)
    except tf.errors.ResourceExhaustedError as error:
        _LAST_TRAINER.clear()  # a smaller pack may fit without it
        for outcome in outcomes:
            if not outcome.stopped:
                outcome.out_of_memory(error)
    return [outcome.result() for outcome in outcomes]


def _run_pack(spec: TrainSpec, data: Dataset, trainer: PackedTrainer,
              outcomes: Sequence[_Outcome]) -> None:
    x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    x_val, y_val = tf.constant(data.x_val), tf.constant(data.y_val)
    for epoch in range(spec.epochs):
        order = batch_order(_init_seed(spec), epoch, len(data.y_train))
        losses = trainer.train_epoch(x, y, order, spec.batch_size)
        values = trainer.evaluate(x_val, y_val).get(spec.metric, np.full(trainer.size, math.nan))
        for copy in np.flatnonzero(trainer.active).tolist():
            if outcomes[copy].epoch_end(epoch + 1, float(losses[copy]), float(values[copy])):
                trainer.stop(copy)
        if not trainer.active.any():
            return


def _init_seed(spec: TrainSpec) -> int:
    """The seed of the initial weights and of the batch order."""
    return spec.seed if spec.init_seed is None else spec.init_seed


def _train_one(spec: TrainSpec, config: AdamConfig, hook: EpochHook) -> TrainResult:
    data, model = _set_up(spec, config)
    compile_for(model, spec.data.target.kind, make_optimizer(config))
    outcome = _Outcome(spec.metric, hook)
    batches, steps = _batches(spec, data)
    try:
        model.fit(batches, epochs=spec.epochs, steps_per_epoch=steps, shuffle=False,
                  validation_data=(data.x_val, data.y_val), callbacks=[_EpochWatcher(outcome)],
                  verbose=0)
    except tf.errors.ResourceExhaustedError as error:
        outcome.out_of_memory(error)
    return outcome.result()


def _batches(spec: TrainSpec, data: Dataset) -> tuple[tf.data.Dataset, int]:
    """Every epoch's batches in the packed path's order, one epoch after the other, and the
    number of batches in an epoch. Given ``steps_per_epoch``, fit goes on where the last
    epoch stopped instead of starting the data set again: one fit call, one trace, and
    about 0.1 s per epoch less than one fit per epoch."""
    n, seed = len(data.y_train), _init_seed(spec)
    orders = tf.data.Dataset.from_generator(  # one epoch's order at a time
        lambda: (batch_order(seed, epoch, n) for epoch in range(spec.epochs)),
        output_signature=tf.TensorSpec([n], tf.int64))
    with tf.device("/CPU:0"):  # tf.data runs on the host: keep its source there
        x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    batches = (orders
               .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order)
                         .batch(spec.batch_size))
               .map(lambda rows: (tf.gather(x, rows), tf.gather(y, rows))))
    return batches, -(-n // spec.batch_size)


def _set_up(spec: TrainSpec, config: AdamConfig) -> tuple[Dataset, keras.Model]:
    try:
        data = load_dataset(source_for(spec.data, spec.data_file), spec.dataset, spec.seed)
        keras.backend.clear_session()
        # The same seed for every trial: each starts from the same weights and batch order,
        # so trials differ only in their Adam numbers (and a HyperModel's searched values).
        keras.utils.set_random_seed(_init_seed(spec))
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


class _Outcome:
    """One configuration's epochs: reports each epoch's objective to its hook, and stops on
    divergence, pruning or cancellation (the packed and the fit path share it)."""

    def __init__(self, metric: str, hook: EpochHook) -> None:
        self.metric = metric
        self._hook = hook
        self.history: list[float] = []
        self._stopped: tuple[str, str] | None = None

    @property
    def stopped(self) -> bool:
        """True once training this configuration must not go on."""
        return self._stopped is not None

    def epoch_end(self, epoch: int, loss: float, value: float) -> bool:
        """Epoch ``epoch`` (from 1) ended with this training loss and objective value;
        returns True when training must stop."""
        if not (math.isfinite(loss) and math.isfinite(value)):
            bad, number = ("loss", loss) if not math.isfinite(loss) else (self.metric, value)
            self._stopped = ("fail", f"diverged: {bad} is {number} at epoch {epoch}")
            return True
        self.history.append(value)
        reason = self._hook(epoch, value)
        if reason is not None:
            self._stopped = ("pruned", reason)
        return self.stopped

    def out_of_memory(self, error: tf.errors.ResourceExhaustedError) -> None:
        """Training ran out of accelerator or host memory."""
        self._stopped = ("fail", f"out of memory: {error.message[:200]}")

    def result(self) -> TrainResult:
        """The outcome once training has ended."""
        history = tuple(self.history)
        if self._stopped is not None:
            state, reason = self._stopped
            return TrainResult(state, None, reason, len(history), history)
        if not history:
            return TrainResult("fail", None, "no epoch finished", 0, history)
        return TrainResult("complete", history[-1], None, len(history), history)


class _EpochWatcher(keras.callbacks.Callback):
    """Hands ``fit``'s epoch logs to an ``_Outcome`` and stops fit when it says so."""

    def __init__(self, outcome: _Outcome) -> None:
        super().__init__()
        self._outcome = outcome

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss, value = float(logs.get("loss", math.nan)), float(logs.get(self._outcome.metric,
                                                                        math.nan))
        if self._outcome.epoch_end(epoch + 1, loss, value):
            self.model.stop_training = True


def configure_devices() -> list[str]:
    """Let TensorFlow grow GPU memory as needed (one worker process per GPU); list GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]
