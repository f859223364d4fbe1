"""Where a trial's model comes from: one ``ModelSource`` per kind of ``model`` a job names.

The built-in zoo follows the Adam paper's experiments (Kingma & Ba, 2015); an uploaded Keras
file is loaded only after the allow-list passes (``model_files.load_checked``); a plugin is
an operator's package on this worker (``plugins.build_plugin``). Each returns an uncompiled
(or to-be-recompiled) model: ``training.py`` owns the loss, the metrics and the optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras

from tuner_service.adam import HyperValue
from tuner_service.schemas import (
    Architecture,
    CNNSpec,
    MLPSpec,
    ModelSpec,
    PluginModelSpec,
    UploadedModelSpec,
)


class ModelSource(Protocol):
    """Builds a fresh model for data of ``input_shape`` (no batch axis) and ``n_outputs``
    outputs (the logits of classes, or values); weights drawn from Keras's global seed."""

    def build(self, input_shape: tuple[int, ...], n_outputs: int) -> keras.Model: ...


@dataclass(frozen=True)
class BuiltinSource:
    """One of the built-in architectures; it adapts to the data's shape and target."""

    spec: Architecture

    def build(self, input_shape: tuple[int, ...], n_outputs: int) -> keras.Model:
        return build_model(self.spec, input_shape, n_outputs)


@dataclass(frozen=True)
class FileSource:
    """An uploaded .keras file, checked against the allow-list before it is loaded.

    ``reinit`` clones the architecture with fresh weights (drawn from the job seed, so every
    trial starts alike); ``file`` keeps the file's weights (fine-tuning)."""

    path: Path
    weights: str

    def build(self, input_shape: tuple[int, ...], n_outputs: int) -> keras.Model:
        from workers.model_files import load_checked

        model = load_checked(self.path)
        return keras.models.clone_model(model) if self.weights == "reinit" else model


@dataclass(frozen=True)
class PluginSource:
    """An operator's plugin: a build function, or a KerasTuner HyperModel built with the
    trial's hyperparameter values (the others at their defaults)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, HyperValue] = field(default_factory=dict)

    def build(self, input_shape: tuple[int, ...], n_outputs: int) -> keras.Model:
        from workers.plugins import build_plugin

        return build_plugin(self.name, input_shape, n_outputs, self.options, self.values)


def model_source(spec: ModelSpec, model_file: Path | None,
                 values: Mapping[str, HyperValue]) -> ModelSource:
    """The source of a job's model; ``model_file``: an uploaded file's local copy."""
    if isinstance(spec, UploadedModelSpec):
        if model_file is None:
            raise ValueError("an uploaded model needs its file on this worker")
        return FileSource(model_file, spec.weights)
    if isinstance(spec, PluginModelSpec):
        return PluginSource(spec.plugin, spec.options, values)
    return BuiltinSource(spec)


def outputs_probabilities(model: keras.Model) -> bool:
    """True when the layer computing the model's output (inside nested models too) applies
    softmax or sigmoid: its loss must then not take logits."""
    from workers.model_files import applies_probabilities, output_layer

    return applies_probabilities(output_layer(model))


def build_model(spec: Architecture, input_shape: tuple[int, ...], n_outputs: int
                ) -> keras.Model:
    """A fresh, uncompiled model with ``n_outputs`` linear outputs: the logits of classes, or
    the values of a regression (logistic regression on values is linear regression)."""
    inputs = keras.Input(shape=input_shape)
    if isinstance(spec, CNNSpec):
        hidden = _conv_stack(spec, inputs)
    else:
        hidden = keras.layers.Flatten()(inputs)
    if isinstance(spec, MLPSpec):
        for units in spec.hidden_units:
            hidden = keras.layers.Dense(units, activation="relu")(hidden)
            hidden = keras.layers.Dropout(spec.dropout)(hidden)
    outputs = keras.layers.Dense(n_outputs)(hidden)
    return keras.Model(inputs, outputs, name=spec.builtin)


def _conv_stack(spec: CNNSpec, inputs: keras.KerasTensor) -> keras.KerasTensor:
    # (height, width) examples get one channel; (height, width, channels) pass unchanged.
    shape = tuple(inputs.shape[1:])
    hidden = keras.layers.Reshape((*shape, 1) if len(shape) == 2 else shape)(inputs)
    for filters in spec.filters:
        hidden = keras.layers.Conv2D(filters, spec.kernel_size, padding="same",
                                     activation="relu")(hidden)
        hidden = keras.layers.MaxPooling2D(spec.pool_size, strides=2, padding="same")(hidden)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(spec.dense_units, activation="relu")(hidden)
    return keras.layers.Dropout(spec.dropout)(hidden)
