"""The service's size arithmetic (no Keras) against real Keras models, and the worker's
memory bound."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import keras
import pytest

from tuner_service.config import Settings
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.model_size import count_params, layer_sizes
from tuner_service.schemas import (
    BuiltinDatasetSpec,
    CNNSpec,
    LogisticRegressionSpec,
    MLPSpec,
    ModelSpec,
)
from workers.data import BuiltinSource, load_dataset
from workers.models import build_model

MODELS: list[ModelSpec] = [
    LogisticRegressionSpec(builtin="logistic_regression"),
    MLPSpec(builtin="mlp", hidden_units=[7]),
    MLPSpec(builtin="mlp", hidden_units=[1000, 1000]),  # the paper's
    MLPSpec(builtin="mlp", hidden_units=[13, 1, 8, 5, 3, 2, 9, 4]),
    CNNSpec(builtin="cnn"),  # the paper's c64-c64-c128-1000
    CNNSpec(builtin="cnn", filters=[3], kernel_size=1, pool_size=1, dense_units=1),
    # Six poolings take every data set down to 1 x 1, through odd sizes (7 -> 4, 5 -> 3).
    CNNSpec(builtin="cnn", filters=[2, 5, 1, 4, 3, 6], kernel_size=11, pool_size=5,
            dense_units=9),
    CNNSpec(builtin="cnn", filters=[8, 4], kernel_size=4, pool_size=2, dense_units=17),
]


# Every built-in's (examples shape, outputs), and uploads': one-channel images given as
# (height, width), and a regression's three outputs.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    **{name: (data.feature_shape, data.target.n_outputs) for name, data in BUILTINS.items()},
    "upload_15x9": ((15, 9), 4),
    "upload_regression_6x6x2": ((6, 6, 2), 3),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def dataset(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("model", MODELS, ids=lambda model: repr(model))
def test_the_parameter_count_is_keras_own(model: ModelSpec, dataset: str) -> None:
    shape, outputs = SHAPES[dataset]
    keras_model = build_model(model, shape, outputs)
    assert count_params(model, shape, outputs) == keras_model.count_params()


@pytest.mark.parametrize("model", MODELS, ids=lambda model: repr(model))
def test_the_layers_outputs_are_keras_own(model: ModelSpec, dataset: str) -> None:
    shape, outputs = SHAPES[dataset]
    keras_model = build_model(model, shape, outputs)
    layers = [layer for layer in keras_model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    ours = layer_sizes(model, shape, outputs)
    assert [(size.params, size.outputs) for size in ours] == [
        (layer.count_params(), math.prod(layer.output.shape[1:])) for layer in layers]


def test_the_digits_shape_is_what_the_worker_loads() -> None:
    # The other data sets download; their shapes are in workers/data.py's docstring.
    data = load_dataset(BuiltinSource("digits"), BuiltinDatasetSpec(builtin="digits"), 0)
    expected = BUILTINS["digits"]
    assert data.input_shape == expected.feature_shape
    assert int(max(data.y_train.max(), data.y_val.max())) + 1 == expected.target.n_classes
    assert len(data.y_train) + len(data.y_val) == expected.n_examples


def test_the_worker_replaces_a_child_past_its_memory_bound_given_in_kib(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # workers.celery_app builds an app from the environment on import: keep it in tmp_path.
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    celery_app = importlib.import_module("workers.celery_app")
    default = celery_app.create_celery(Settings(home=tmp_path))
    assert default.conf.worker_max_memory_per_child == 6 * 1024 * 1024
    small = celery_app.create_celery(Settings(home=tmp_path, worker_max_memory_per_child="1GiB"))
    assert small.conf.worker_max_memory_per_child == 1024 * 1024
