"""The built-in model zoo, after the Adam paper's experiments (Kingma & Ba, 2015)."""

from __future__ import annotations

import keras

from tuner_service.schemas import CNNSpec, LogisticRegressionSpec, MLPSpec


def build_model(spec: LogisticRegressionSpec | MLPSpec | CNNSpec,
                input_shape: tuple[int, ...], n_outputs: int) -> keras.Model:
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
