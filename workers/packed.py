"""Packed trials: K Adam configurations of one Keras model trained in one pass.

The model is built once; every trainable variable is stacked K times (shape ``(K, ...)``, every
copy starting from the weights the configuration would get alone), and each batch runs
``tf.vectorized_map`` over the copies of a function that calls ``model.stateless_call``. One
gradient of the sum of the copies' losses gives every copy its own gradient (the copies share
nothing), and one vectorised Adam step updates them all, with the five numbers as length-K
vectors. Copies see the same batches in the same order as ``model.fit`` does in
``training._train_one`` (``batch_order``), so that each copy's result equals training alone
up to float32 rounding (batched and single kernels sum in different orders).

Why not K models and K Keras optimizers: that keeps the per-op overhead (K small matmuls, K
Adam updates per variable) that packing exists to remove; see shared/design/packed-trials.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tuner_service.adam import AdamConfig

# The loss of one batch (mean over its examples, as Keras reduces it): (targets, predictions).
LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
# Validation is evaluated in chunks of this many examples times copies (K copies' activations
# are alive at once): one pass for small sets, and for a big pack of a big set a chunk never
# larger than a training batch of the pack (which the memory check sized), beyond this.
VALIDATION_EXAMPLE_COPIES = 8192


def batch_order(seed: int, epoch: int, n_examples: int) -> np.ndarray:
    """The order of the training examples in epoch ``epoch`` (0-based); both the packed and
    the single-configuration path take their batches from it, so they see the same ones."""
    return np.random.default_rng([seed, epoch]).permutation(n_examples)


def unpackable(model: keras.Model) -> str | None:
    """What in ``model`` itself rules packing out (a sentence for its user), else None.

    Packing calls the model's layers directly, so a class that trains or scores in its own
    way would be bypassed; a stateful RNN carries state across batches that one pass of K
    copies would mix up."""
    for method in ("train_step", "test_step", "compute_loss"):
        if getattr(type(model), method) is not getattr(keras.Model, method):
            return f"the model overrides {method}"
    # _flatten_layers walks nested models too (Keras has no public equivalent).
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "stateful", False) is True:
            return f"layer {layer.name!r} is stateful"
    return None


class PackedTrainer:
    """K copies of ``model`` with their own weights, Adam moments and Adam numbers.

    The Keras model's own variables are never changed (``stateless_call`` only), so ``start``
    can reset the copies from them and one trainer (and its traced functions) serves any
    number of packs of the same model and size in turn.
    """

    def __init__(self, model: keras.Model, loss: LossFn, target: str, size: int) -> None:
        self.size = size
        self._model = model
        self._loss = loss
        self._target = target
        # Keras's train_step passes `training` only to models whose call accepts it.
        self._training_kwarg = bool(getattr(model, "_call_has_training_arg", True))
        self._float_state = [keras.backend.is_float_dtype(v.dtype)
                             for v in model.non_trainable_variables]
        self._initial = [np.asarray(v) for v in model.trainable_variables]
        self._initial_state = [np.asarray(v) for v in model.non_trainable_variables]
        self._weights = [_stacked(w, size) for w in self._initial]
        self._m = [_stacked(np.zeros_like(w), size) for w in self._initial]
        self._v = [_stacked(np.zeros_like(w), size) for w in self._initial]
        self._state = [_stacked(s, size) if is_float else tf.Variable(s)
                       for s, is_float in zip(self._initial_state, self._float_state,
                                              strict=True)]
        self._iterations = tf.Variable(0, dtype=tf.int64)
        # The configurations' numbers are variables, not constants of the trace: a later pack
        # of the same size reuses the traced functions.
        self._numbers = {name: tf.Variable(tf.zeros(size)) for name in _NUMBERS}
        self._active = tf.Variable(tf.ones(size, dtype=tf.bool))
        self._train_epoch: Any = None
        self._evaluate: Any = None

    def start(self, configs: Sequence[AdamConfig]) -> None:
        """Reset every copy to the model's initial weights and give copy i ``configs[i]``."""
        if len(configs) != self.size:
            raise ValueError(f"a pack of {self.size} needs {self.size} configurations")
        for stacked, initial in zip(self._weights, self._initial, strict=True):
            stacked.assign(np.broadcast_to(initial, tuple(stacked.shape)))
        for moment in (*self._m, *self._v):
            moment.assign(tf.zeros_like(moment))
        for state, initial, is_float in zip(self._state, self._initial_state,
                                            self._float_state, strict=True):
            state.assign(np.broadcast_to(initial, tuple(state.shape)) if is_float else initial)
        self._iterations.assign(0)
        for name, values in _adam_numbers(configs).items():
            self._numbers[name].assign(values)
        self._active.assign(np.ones(self.size, dtype=bool))

    def stop(self, copy: int) -> None:
        """Copy ``copy`` keeps its weights from now on (pruned, cancelled or diverged)."""
        self._active[copy].assign(False)

    @property
    def active(self) -> np.ndarray:
        """Which copies still train, (K,) bool."""
        return np.asarray(self._active)

    def train_epoch(self, x: tf.Tensor, y: tf.Tensor, order: np.ndarray, batch_size: int
                    ) -> np.ndarray:
        """One epoch over ``x[order]`` in batches of ``batch_size`` (the last one smaller);
        returns each copy's mean training loss (batches weighted by their size, as Keras)."""
        if self._train_epoch is None:
            self._train_epoch = self._trace_train_epoch(x, y)
        batch = tf.constant(batch_size, dtype=tf.int32)
        return np.asarray(self._train_epoch(x, y, tf.constant(order, dtype=tf.int32), batch))

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, np.ndarray]:
        """Each copy's val_loss and its val_accuracy (classes) or val_mean_absolute_error
        (values): means over the examples, as Keras's fit reports them."""
        if self._evaluate is None:
            self._evaluate = self._trace_evaluate(x, y)
        loss, metric = self._evaluate(x, y)
        name = "val_accuracy" if self._target == "classes" else "val_mean_absolute_error"
        return {"val_loss": np.asarray(loss), name: np.asarray(metric)}

    def trial_run(self, x: np.ndarray, y: np.ndarray) -> str | None:
        """Trace and run one step and one evaluation on a few examples: what went wrong, in
        a sentence for a user, or None. Whatever it is, training one by one avoids it; running
        out of memory is raised, as fewer copies may fit."""
        try:
            self.train_epoch(tf.constant(x), tf.constant(y), np.arange(len(y)), len(y))
            self.evaluate(tf.constant(x), tf.constant(y))
        except tf.errors.ResourceExhaustedError:
            raise  # too many copies for this device: a smaller pack may fit
        except Exception as error:
            # TensorFlow's errors from traced code end with the line that says what it was.
            last = (str(error).strip().splitlines() or [""])[-1].strip()
            kind = type(error).__name__
            detail = last if last.startswith(kind) else f"{kind}: {last}"
            return f"TensorFlow cannot train copies of this model side by side: {detail[:200]}"
        return None

    # -- the traced functions -------------------------------------------------------------

    def _trace_train_epoch(self, x: tf.Tensor, y: tf.Tensor) -> Any:
        # One tf.function per epoch with the batch loop inside it: one Python call per epoch
        # instead of one per batch. Unknown sizes, so any data set of this shape reuses it.
        signature = [_any_length(x), _any_length(y), tf.TensorSpec([None], tf.int32),
                     tf.TensorSpec([], tf.int32)]

        @tf.function(input_signature=signature)
        def train_epoch(x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch_size: tf.Tensor
                        ) -> tf.Tensor:
            n = tf.shape(order)[0]
            total = tf.zeros(self.size)
            for start in tf.range(0, n, batch_size):
                rows = order[start:tf.minimum(start + batch_size, n)]
                losses = self._step(tf.gather(x, rows), tf.gather(y, rows))
                total += losses * tf.cast(tf.shape(rows)[0], tf.float32)
            return total / tf.cast(n, tf.float32)

        return train_epoch

    def _trace_evaluate(self, x: tf.Tensor, y: tf.Tensor) -> Any:
        @tf.function(input_signature=[_any_length(x), _any_length(y)])
        def evaluate(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            n = tf.shape(x)[0]
            loss_sum, metric_sum = tf.zeros(self.size), tf.zeros(self.size)
            chunk = max(1, VALIDATION_EXAMPLE_COPIES // self.size)
            for start in tf.range(0, n, chunk):
                end = tf.minimum(start + chunk, n)
                loss, metric = self._validate(x[start:end], y[start:end])
                size = tf.cast(end - start, tf.float32)
                loss_sum += loss * size
                metric_sum += metric * size
            count = tf.cast(n, tf.float32)
            return loss_sum / count, metric_sum / count

        return evaluate

    def _step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """One batch for every copy: forward, gradients, Adam; returns the copies' losses."""
        floats, shared = self._split(self._state)
        with tf.GradientTape() as tape:
            losses, new_floats, new_shared = self._forward(x, y, shared)
            # A stopped copy may be NaN: tf.where's gradient gives it zeros, not NaN.
            total = tf.reduce_sum(tf.where(self._active, losses, tf.zeros_like(losses)))
        self._adam(tape.gradient(total, self._weights))
        for state, new in zip(floats, new_floats, strict=True):
            state.assign(self._where_active(new, state))
        for state, new in zip(shared, new_shared, strict=True):
            state.assign(new[0])  # loop-invariant, so equal in every copy: advance it once
        self._iterations.assign_add(1)
        return losses

    def _forward(self, x: tf.Tensor, y: tf.Tensor, shared: Sequence[tf.Variable]
                 ) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        # Integer state (a Dropout's seed generator) is captured, not batched: every copy
        # then draws the mask it would draw alone, and the draw is done once for all.
        shared_values = [tf.convert_to_tensor(s) for s in shared]

        def copy_loss(stacked: tuple[list[tf.Tensor], list[tf.Tensor]]
                      ) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
            weights, floats = stacked
            predictions, state, extra = self._model.stateless_call(
                weights, self._merge(floats, shared_values), x, return_losses=True,
                **self._call_kwargs(training=True))
            new_floats, new_shared = self._split(state)
            return self._loss(y, predictions) + _sum(extra), new_floats, new_shared

        result: tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]] = _per_copy_map(
            copy_loss, self._copies())
        return result

    def _validate(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        shared = [tf.convert_to_tensor(s) for s in self._split(self._state)[1]]

        def copy_scores(stacked: tuple[list[tf.Tensor], list[tf.Tensor]]
                        ) -> tuple[tf.Tensor, tf.Tensor]:
            weights, floats = stacked
            predictions, _, extra = self._model.stateless_call(
                weights, self._merge(floats, shared), x, return_losses=True,
                **self._call_kwargs(training=False))
            return self._loss(y, predictions) + _sum(extra), self._metric(y, predictions)

        scores: tuple[tf.Tensor, tf.Tensor] = _per_copy_map(copy_scores, self._copies())
        return scores

    def _copies(self) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """What differs from copy to copy: the weights and the float state, (K, ...) each."""
        floats, _ = self._split(self._state)
        return ([tf.convert_to_tensor(w) for w in self._weights],
                [tf.convert_to_tensor(s) for s in floats])

    def _metric(self, y: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
        if self._target == "classes":
            labels = tf.cast(tf.reshape(y, [-1]), tf.int64)
            hits = tf.equal(tf.argmax(predictions, axis=-1), labels)
            return tf.reduce_mean(tf.cast(hits, tf.float32))
        errors = tf.abs(tf.cast(y, predictions.dtype) - predictions)
        return tf.reduce_mean(tf.reduce_mean(errors, axis=-1))

    def _adam(self, gradients: Sequence[tf.Tensor]) -> None:
        """Keras 3.15's Adam (keras/src/optimizers/adam.py), every copy at once; decay is its
        InverseTimeDecay(lr, decay_steps=1, decay_rate=decay) at the 0-based step."""
        numbers = self._numbers
        step = tf.cast(self._iterations, tf.float32)
        t = step + 1.0
        learning_rate = numbers["learning_rate"] / (1.0 + numbers["decay"] * step)
        alpha = (learning_rate * tf.sqrt(1.0 - tf.pow(numbers["beta_2"], t))
                 / (1.0 - tf.pow(numbers["beta_1"], t)))
        for weight, m, v, gradient in zip(self._weights, self._m, self._v, gradients,
                                          strict=True):
            rank = len(weight.shape) - 1
            new_m = m + (gradient - m) * _per_copy(numbers["one_minus_beta_1"], rank)
            new_v = v + (tf.square(gradient) - v) * _per_copy(numbers["one_minus_beta_2"], rank)
            update = (new_m * _per_copy(alpha, rank)
                      / (tf.sqrt(new_v) + _per_copy(numbers["epsilon"], rank)))
            m.assign(self._where_active(new_m, m))
            v.assign(self._where_active(new_v, v))
            weight.assign(self._where_active(weight - update, weight))

    def _where_active(self, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
        # tf.where, not a multiplication by 0/1: 0 * NaN is NaN.
        return tf.where(_per_copy(self._active, len(old.shape) - 1), new, old)

    def _split(self, state: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """The float state (one per copy) and the shared state, from the model's order."""
        floats = [s for s, is_float in zip(state, self._float_state, strict=True) if is_float]
        shared = [s for s, is_float in zip(state, self._float_state, strict=True)
                  if not is_float]
        return floats, shared

    def _merge(self, floats: Sequence[tf.Tensor], shared: Sequence[tf.Tensor]
               ) -> list[tf.Tensor]:
        """The inverse of ``_split``: the state in the model's order."""
        float_values, shared_values = iter(floats), iter(shared)
        return [next(float_values) if is_float else next(shared_values)
                for is_float in self._float_state]

    def _call_kwargs(self, *, training: bool) -> dict[str, bool]:
        return {"training": training} if self._training_kwarg else {}


_NUMBERS = ("learning_rate", "decay", "beta_1", "beta_2", "epsilon", "one_minus_beta_1",
            "one_minus_beta_2")


def _adam_numbers(configs: Sequence[AdamConfig]) -> dict[str, np.ndarray]:
    """The configurations' numbers as float32 vectors, rounded as Keras rounds them: its
    ``1 - beta`` is taken in float64 (Python) before it meets a float32 tensor."""
    def vector(values: Sequence[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).astype(np.float32)

    numbers = {name: vector([getattr(c, name) for c in configs])
               for name in ("learning_rate", "decay", "beta_1", "beta_2", "epsilon")}
    numbers["one_minus_beta_1"] = vector([1 - c.beta_1 for c in configs])
    numbers["one_minus_beta_2"] = vector([1 - c.beta_2 for c in configs])
    return numbers


def _per_copy_map(function: Callable[[Any], Any], copies: Any) -> Any:
    # pfor has no converter for some ops with per-copy operands (Conv2D's filter must be the
    # same in every iteration): those run as a while loop over the copies, inside the same
    # graph; everything else stays vectorised.
    return tf.vectorized_map(function, copies, fallback_to_while_loop=True)


def _stacked(value: np.ndarray, size: int) -> tf.Variable:
    return tf.Variable(np.broadcast_to(value, (size, *value.shape)).copy())


def _per_copy(vector: tf.Tensor, rank: int) -> tf.Tensor:
    """(K,) reshaped to (K, 1, ..., 1) so that it broadcasts over a copy's variable."""
    return tf.reshape(vector, [-1] + [1] * rank)


def _any_length(array: tf.Tensor) -> tf.TensorSpec:
    return tf.TensorSpec([None, *array.shape[1:]], array.dtype)


def _sum(losses: Sequence[tf.Tensor]) -> tf.Tensor | float:
    # Keras adds each extra loss (regularisers, add_loss) summed, in floatx.
    return sum((tf.reduce_sum(tf.cast(loss, tf.float32)) for loss in losses), 0.0)
