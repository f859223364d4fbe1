"""Model plugins for tuner-service's tests: each kind of ``tuner_service.models`` entry point."""

from __future__ import annotations

from typing import Any

import keras
import keras_tuner


def tiny_mlp(input_shape: tuple[int, ...], n_outputs: int, units: int = 16,
             activation: str = "relu") -> keras.Model:
    """A one-hidden-layer perceptron.

    Flattens its input first, so any input shape works.
    """
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(units, activation=activation)(hidden)
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(hidden), name="tiny_mlp")


def wide_mlp(input_shape: tuple[int, ...], n_outputs: int, **options: Any) -> keras.Model:
    """A perceptron with any number of hidden layers, given by a JSON schema."""
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Flatten()(inputs)
    for units in options.get("hidden_units", [64]):
        hidden = keras.layers.Dense(units, activation="relu")(hidden)
    if options.get("fail"):
        # Lets the tests see how a plugin's own exception reaches the user.
        raise ValueError(f"wide_mlp was asked to fail: {options['fail']}")
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(hidden), name="wide_mlp")


# The JSON schema of wide_mlp's options; the service shows it as is.
wide_mlp.options_schema = {  # type: ignore[attr-defined]
    "type": "object",
    "properties": {
        "hidden_units": {"type": "array", "items": {"type": "integer", "minimum": 1},
                         "default": [64]},
        "fail": {"type": "string"},
    },
    "additionalProperties": False,
}


class DigitsHyperModel(keras_tuner.HyperModel):
    """A searchable perceptron for the 8 x 8 digits (scikit-learn's, shaped (8, 8, 1) as the
    built-in data set is; 10 classes)."""

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        inputs = keras.Input(shape=(8, 8, 1))
        activation = hp.Choice("activation", ["relu", "tanh"], default="relu")
        hidden = keras.layers.Flatten()(inputs)
        hidden = keras.layers.Dense(hp.Int("units", 8, 64, step=8, default=32),
                                    activation=activation, name="hidden")(hidden)
        if hp.Boolean("extra_layer", default=False):
            hidden = keras.layers.Dense(16, activation=activation, name="extra")(hidden)
        hidden = keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5, default=0.1))(hidden)
        model = keras.Model(inputs, keras.layers.Dense(10)(hidden), name="kt_digits")
        # The service replaces this optimizer with the Adam it tunes.
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model


def build_hp(hp: keras_tuner.HyperParameters) -> keras.Model:
    """A KerasTuner-style build function for the digits flattened to 64 features."""
    inputs = keras.Input(shape=(64,))
    hidden = keras.layers.Dense(hp.Int("width", 4, 32, default=8), name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(hidden), name="kt_function")
