"""How large a job's model is, and how much memory one of its trials needs, without Keras.

The API checks both at submit (``validation.py``), so a job that cannot fit is refused with 422
instead of taking a worker child down mid-trial. Each built-in model kind is a list of layers
(the arithmetic of ``workers/models.build_model``, layer by layer); a new kind is one more
function in ``ARCHITECTURES``. ``tests/workers/test_model_size.py`` holds these counts to real
Keras models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuner_service.model_sources.types import ModelDescription
from tuner_service.schemas import (
    Architecture,
    CNNSpec,
    DataDescription,
    JobCreate,
    LogisticRegressionSpec,
    MLPSpec,
    ModelSpec,
)

Shape = tuple[int, ...]
FLOAT_BYTES = 4  # the workers train in float32
# Per weight, Adam training holds the weight, its gradient and Adam's two moments.
COPIES_PER_WEIGHT = 4
# Per activation kept for the backward pass, the activation and its gradient.
COPIES_PER_ACTIVATION = 2


@dataclass(frozen=True)
class Layer:
    """A Keras layer as far as size goes; by default without weights, keeping its input's shape."""

    # False for a layer whose output is a view of its input (nothing more to keep).
    stores_output = True

    def params(self, input_shape: Shape) -> int:
        """How many weights the layer has on this input."""
        return 0

    def output_shape(self, input_shape: Shape) -> Shape:
        """Shape of one example's output."""
        return input_shape


@dataclass(frozen=True)
class Dense(Layer):
    """A kernel and a bias, on a flat input."""

    units: int

    def params(self, input_shape: Shape) -> int:
        return input_shape[-1] * self.units + self.units

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.units)


@dataclass(frozen=True)
class Conv2D(Layer):
    """A square kernel with ``padding="same"`` and stride 1: height and width are kept."""

    filters: int
    kernel_size: int

    def params(self, input_shape: Shape) -> int:
        return self.kernel_size ** 2 * input_shape[-1] * self.filters + self.filters

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.filters)


@dataclass(frozen=True)
class MaxPool2D(Layer):
    """Stride 2 with ``padding="same"``: ceil(h / 2) x ceil(w / 2), whatever the pool size."""

    def output_shape(self, input_shape: Shape) -> Shape:
        height, width, channels = input_shape
        return (math.ceil(height / 2), math.ceil(width / 2), channels)


@dataclass(frozen=True)
class AddChannel(Layer):
    """Gives (height, width) examples one channel; (height, width, channels) pass as they are."""

    stores_output = False  # a reshape: the same values

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape, 1) if len(input_shape) == 2 else input_shape


@dataclass(frozen=True)
class Dropout(Layer):
    """Zeroes a fraction of its input while training: no weights, the same shape."""


@dataclass(frozen=True)
class Flatten(Layer):
    """One example becomes a vector."""

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)


def _logistic_regression(_spec: LogisticRegressionSpec, n_outputs: int) -> list[Layer]:
    return [Flatten(), Dense(n_outputs)]


def _mlp(spec: MLPSpec, n_outputs: int) -> list[Layer]:
    hidden = [layer for units in spec.hidden_units for layer in (Dense(units), Dropout())]
    return [Flatten(), *hidden, Dense(n_outputs)]


def _cnn(spec: CNNSpec, n_outputs: int) -> list[Layer]:
    convs = [layer for filters in spec.filters
             for layer in (Conv2D(filters, spec.kernel_size), MaxPool2D())]
    return [AddChannel(), *convs, Flatten(), Dense(spec.dense_units), Dropout(),
            Dense(n_outputs)]


# Model kind (``builtin``) -> its layers after the input, given the spec and the output count
# (the classes, or the values of a regression).
ARCHITECTURES: dict[str, Callable[[Any, int], list[Layer]]] = {
    "logistic_regression": _logistic_regression,
    "mlp": _mlp,
    "cnn": _cnn,
}


@dataclass(frozen=True)
class LayerSize:
    """One layer's weights and the values it outputs per example."""

    params: int
    outputs: int
    stored: bool = True  # whether training keeps the outputs (a reshape's are its input's)


def layer_sizes(model: Architecture, input_shape: Shape, n_outputs: int) -> list[LayerSize]:
    """Every layer of the model after its input, in order."""
    sizes = []
    shape = input_shape
    for layer in ARCHITECTURES[model.builtin](model, n_outputs):
        params, shape = layer.params(shape), layer.output_shape(shape)
        sizes.append(LayerSize(params, math.prod(shape), layer.stores_output))
    return sizes


def count_params(model: Architecture, input_shape: Shape, n_outputs: int) -> int:
    """The model's parameter count, as Keras's ``model.count_params()`` gives it."""
    return sum(size.params for size in layer_sizes(model, input_shape, n_outputs))


def shape_problem(model: ModelSpec, described: ModelDescription, data: DataDescription
                  ) -> str | None:
    """Why ``model`` cannot take ``data``'s examples or predict its target, or None when it
    can. Built-ins and build plugins adapt to any shape; a file or a HyperModel has its own."""
    if isinstance(model, CNNSpec) and len(data.feature_shape) not in (2, 3):
        return (f"cnn needs examples shaped (height, width) or (height, width, channels); "
                f"{data.name!r} has feature_shape {list(data.feature_shape)}: use mlp or "
                "logistic_regression")
    if described.input_shape is not None and not _fits(described.input_shape,
                                                       data.feature_shape):
        return (f"{described.name!r} takes inputs shaped {_shown(described.input_shape)}, "
                f"but data set {data.name!r} has feature_shape {_shown(data.feature_shape)}")
    if described.output_shape is not None and not _fits(described.output_shape,
                                                        (data.target.n_outputs,)):
        wanted = (f"{data.target.n_classes} classes" if data.target.kind == "classes"
                  else f"{data.target.n_outputs} values")
        return (f"{described.name!r} outputs shape {_shown(described.output_shape)}, but "
                f"data set {data.name!r} needs one output per target: shape "
                f"[{data.target.n_outputs}] ({wanted})")
    return None


def _fits(declared: tuple[int | None, ...], actual: tuple[int, ...]) -> bool:
    return len(declared) == len(actual) and all(
        size is None or size == real for size, real in zip(declared, actual, strict=True))


def _shown(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if size is None else str(size) for size in shape) + "]"


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated memory of one trial, in bytes, and what it is made of."""

    params: int
    batch_size: int  # the batch that training really uses (never more than the data set)
    weights_bytes: int  # weights, gradients and Adam's two moments
    batch_bytes: int  # one batch: its input, every layer's output and their gradients

    @property
    def total_bytes(self) -> int:
        """The whole estimate."""
        return self.weights_bytes + self.batch_bytes


def estimate_training_memory(spec: JobCreate, data: DataDescription,
                             described: ModelDescription | None = None) -> TrainingMemory:
    """Memory one trial of ``spec`` needs to train, in a deliberately simple model.

    Left out, so this is a floor rather than a forecast: the data set's arrays (about 0.7 GiB
    for cifar10, shared by a worker child's trials), the framework's own few hundred MiB,
    validation batches (forward only, smaller than a training batch), copies the backend keeps
    inside a layer (a ReLU's input beside its output, dropout masks), convolution workspaces
    and allocator fragmentation.
    """
    sizes = _sizes(spec.model, data, described)
    params = sum(size.params for size in sizes)
    # Keras never makes a batch larger than the training set, which is at most this.
    batch = min(spec.budget.batch_size, spec.dataset.max_samples or data.n_examples,
                data.n_examples)
    activations = sum(size.outputs for size in sizes if size.stored) * COPIES_PER_ACTIVATION
    per_example = activations + math.prod(data.feature_shape)
    return TrainingMemory(
        params=params, batch_size=batch,
        weights_bytes=params * COPIES_PER_WEIGHT * FLOAT_BYTES,
        batch_bytes=per_example * batch * FLOAT_BYTES,
    )


def _sizes(model: ModelSpec, data: DataDescription, described: ModelDescription | None
           ) -> list[LayerSize]:
    """A built-in's layers; of a file or a HyperModel, only its weights are known (a floor:
    its activations are left out); a build plugin's size is known once a worker builds it."""
    if isinstance(model, LogisticRegressionSpec | MLPSpec | CNNSpec):
        return layer_sizes(model, data.feature_shape, data.target.n_outputs)
    n_params = described.n_params if described is not None else None
    return [LayerSize(n_params or 0, 0, stored=False)]


def format_bytes(count: int) -> str:
    """Binary units with one decimal, the trailing ``.0`` dropped: ``37.2 GiB``, ``4 GiB``."""
    value, unit = float(count), 0
    # Rounded first, so that 1023.97 KiB reads "1 MiB" rather than "1024 KiB".
    while round(value, 1) >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f}".removesuffix(".0") + f" {_UNITS[unit]}"


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
