"""Uploaded .keras files on the worker, with real Keras and real files (no mocks): genuine
models load and are inspected; files that would run code, or that name anything but Keras's
own classes, are refused before Keras deserialises them, and their payloads never run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tuner_service.model_sources.types import ModelInspection
from workers.model_files import (
    ModelRejected,
    check_config,
    inspect,
    inspect_in_child,
    load_checked,
)

MAX_PARAMS = 10_000_000
CHILD_TIMEOUT_S = 300.0
CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
Config = dict[str, Any]


@pytest.fixture(scope="session")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small functional model as users save it: (8, 8) -> Flatten -> Dense(16, relu) ->
    Dense(10) logits; 8*8*16 + 16 + 16*10 + 10 = 1210 parameters."""
    inputs = keras.Input(shape=(8, 8))
    hidden = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(hidden)
    outputs = keras.layers.Dense(10, name="logits")(hidden)
    path = tmp_path_factory.mktemp("genuine") / "genuine.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a payload would create if it ever ran; each test asserts it never appears."""
    return tmp_path / "pwned"


def rejected(load: Callable[[], object]) -> str:
    with pytest.raises(ModelRejected) as rejection:
        load()
    return str(rejection.value)


def save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


# -- Genuine models --------------------------------------------------------------------------

def test_a_genuine_model_is_inspected(genuine: Path) -> None:
    assert inspect(genuine, max_params=MAX_PARAMS) == ModelInspection(
        input_shape=(8, 8), output_shape=(10,), n_params=1210,
        keras_version=keras.__version__, outputs="logits", layers=4)
    model = load_checked(genuine)
    assert model.count_params() == 1210
    assert model(np.zeros((2, 8, 8), "float32")).shape == (2, 10)


@pytest.mark.parametrize("last", [
    lambda: keras.layers.Dense(3, activation="softmax"),
    lambda: keras.layers.Activation("sigmoid"),
    lambda: keras.layers.Softmax(),
], ids=["dense-softmax", "activation-sigmoid", "softmax-layer"])
def test_a_model_ending_in_softmax_or_sigmoid_outputs_probabilities(
        tmp_path: Path, last: Callable[[], keras.layers.Layer]) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), last()])
    found = inspect(save(model, tmp_path / "m.keras"), max_params=MAX_PARAMS)
    assert (found.outputs, found.input_shape, found.output_shape) == ("probabilities", (4,),
                                                                      (3,))


def test_a_broad_compiled_model_loads_and_computes_what_it_saved(tmp_path: Path) -> None:
    """Keras's own layers, wrappers, initializers, regularizers, constraints, tensor
    operations (x + y, x[:, 0]) and a compile_config all pass the allow-list."""
    inputs = keras.Input((12, 6))
    x = keras.layers.Conv1D(8, 3, padding="same", activation="gelu", bias_initializer="ones",
                            kernel_regularizer=keras.regularizers.L1L2(1e-4, 1e-3),
                            kernel_constraint=keras.constraints.MaxNorm(2.0))(inputs)
    x = keras.layers.LayerNormalization()(keras.layers.BatchNormalization()(x))
    y = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(x)
    y = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(y, y)
    x = keras.layers.TimeDistributed(keras.layers.Dense(8))(x) + y
    x = keras.ops.relu(x[:, 1:]) * 2.0
    x = keras.layers.Dropout(0.1)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(
                      keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.9)),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy", keras.metrics.AUC()])
    path = save(model, tmp_path / "broad.keras")
    sample = np.random.default_rng(0).normal(size=(3, 12, 6)).astype("float32")
    np.testing.assert_allclose(load_checked(path)(sample), model(sample), rtol=1e-5)
    found = inspect(path, max_params=MAX_PARAMS)
    assert (found.outputs, found.n_params) == ("probabilities", model.count_params())


def test_a_model_with_two_inputs_is_rejected(tmp_path: Path) -> None:
    left, right = keras.Input((3,)), keras.Input((5,))
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()([left, right]))
    path = save(keras.Model([left, right], outputs), tmp_path / "m.keras")
    assert rejected(lambda: inspect(path, max_params=MAX_PARAMS)) == (
        "the model has 2 inputs; tuner-service tunes models with one input and one output")


def test_a_model_with_two_outputs_is_rejected(tmp_path: Path) -> None:
    inputs = keras.Input((3,))
    outputs = [keras.layers.Dense(2)(inputs), keras.layers.Dense(1)(inputs)]
    path = save(keras.Model(inputs, outputs), tmp_path / "m.keras")
    assert rejected(lambda: inspect(path, max_params=MAX_PARAMS)) == (
        "the model has 2 outputs; tuner-service tunes models with one input and one output")


def test_a_model_over_the_parameter_limit_is_rejected(genuine: Path) -> None:
    assert rejected(lambda: inspect(genuine, max_params=1000)) == (
        "the model has 1,210 parameters, more than this service's limit of 1,000 "
        "(TUNER_MAX_MODEL_PARAMS)")


# -- A Lambda layer: marshalled Python bytecode in config.json -------------------------------

def lambda_model_file(path: Path, marker: Path) -> Path:
    """A .keras file whose Lambda layer, once deserialised, creates ``marker`` (Keras stores
    the lambda's bytecode; building the model runs it once, so the marker is removed)."""
    marker_path = str(marker)
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: (open(marker_path, "w").close(), x)[1],
                                  name="writes_a_file")(inputs)
    save(keras.Model(inputs, outputs), path)
    marker.unlink()
    return path


@pytest.mark.slow
def test_the_lambda_attack_is_real_when_safe_mode_is_off(tmp_path: Path) -> None:
    control = tmp_path / "control-ran"
    path = lambda_model_file(tmp_path / "lambda.keras", control)
    loader = "import sys, keras; keras.saving.load_model(sys.argv[1], safe_mode=False)"
    done = subprocess.run([sys.executable, "-c", loader, str(path)], capture_output=True,
                          env=CHILD_ENV, timeout=CHILD_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert control.exists()


LAMBDA_REASON = ('layer "writes_a_file": keras.layers.Lambda runs code stored outside the '
                 "model's config; tuner-service does not load it (at config.layers[1])")


def test_a_lambda_model_is_rejected_and_its_code_never_runs(tmp_path: Path,
                                                            marker: Path) -> None:
    path = lambda_model_file(tmp_path / "lambda.keras", marker)
    assert rejected(lambda: load_checked(path)) == LAMBDA_REASON
    assert rejected(lambda: inspect(path, max_params=MAX_PARAMS)) == LAMBDA_REASON
    assert not marker.exists()


@pytest.mark.slow
def test_a_lambda_model_is_rejected_in_the_child(tmp_path: Path, marker: Path) -> None:
    path = lambda_model_file(tmp_path / "lambda.keras", marker)
    assert rejected(lambda: inspect_in_child(path, max_params=MAX_PARAMS,
                                             timeout_s=CHILD_TIMEOUT_S)) == LAMBDA_REASON
    assert not marker.exists()


# -- Hand-edited configs ---------------------------------------------------------------------

def rewrite_config(source: Path, target: Path, edit: Callable[[Config], None]) -> Path:
    """A copy of the archive whose config.json went through ``edit``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as edited:
        for member in original.infolist():
            data = original.read(member)
            if member.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            edited.writestr(member.filename, data)
    return target


def last_dense(config: Config) -> Config:
    layer: Config = config["config"]["layers"][3]
    assert layer["class_name"] == "Dense"
    return layer


def as_layer_class(module: str, class_name: str) -> Callable[[Config, Path], None]:
    def edit(config: Config, marker: Path) -> None:
        layer = last_dense(config)
        layer.update(module=module, class_name=class_name, registered_name=None)
        layer["config"]["args"] = ["sh", "-c", f"touch {marker}"]
    return edit


def set_in_dense(key: str, value: Any) -> Callable[[Config, Path], None]:
    def edit(config: Config, marker: Path) -> None:
        last_dense(config)["config"][key] = json.loads(json.dumps(value).replace(
            "MARKER", str(marker)))
    return edit


def function(module: str, name: str) -> Config:
    return {"module": module, "class_name": "function", "config": name,
            "registered_name": "function"}


def the_dense_becomes(**fields: Any) -> Callable[[Config, Path], None]:
    def edit(config: Config, marker: Path) -> None:
        last_dense(config).update(fields)
    return edit


def the_top_is_the_dense(config: Config, marker: Path) -> None:
    dense = copy.deepcopy(last_dense(config))
    config.clear()
    config.update(dense)


DENSE = 'layer "logits": '
EDITS: dict[str, tuple[Callable[[Config, Path], None], str]] = {
    "layer-os.system": (as_layer_class("os", "system"),
                        DENSE + 'class "system" from module "os" is not part of Keras'),
    "layer-subprocess.Popen": (as_layer_class("subprocess", "Popen"),
                               DENSE + 'class "Popen" from module "subprocess" is not part of '
                                       "Keras"),
    "layer-builtins.exec": (as_layer_class("builtins", "exec"),
                            DENSE + 'class "exec" from module "builtins" is not part of Keras'),
    "layer-builtins.eval": (as_layer_class("builtins", "eval"),
                            DENSE + 'class "eval" from module "builtins" is not part of Keras'),
    "layer-keras-internal-function": (
        as_layer_class("keras.src.utils.python_utils", "func_load"),
        DENSE + "keras.src.utils.python_utils.func_load is not one of Keras's activations, "),
    "activation-builtins.exec": (
        set_in_dense("activation", function("builtins", "exec")),
        DENSE + "function \"exec\" from module \"builtins\" is not one of Keras's own activation "
                "functions (at config.layers[3].config.activation)"),
    "activation-builtins.eval": (
        set_in_dense("activation", function("builtins", "eval")),
        DENSE + "function \"eval\" from module \"builtins\" is not one of Keras's own activation "
                "functions"),
    "activation-os.system-function": (
        set_in_dense("activation", function("os", "system")),
        DENSE + "function \"system\" from module \"os\" is not one of Keras's own activation "
                "functions"),
    "activation-os.system-string": (
        set_in_dense("activation", "os.system"),
        DENSE + 'activation "os.system" is not one of Keras\'s own activations '
                "(at config.layers[3].config.activation)"),
    "activation-keras-helper": (
        # "builtins" makes Keras search its own modules: keras.activations.deserialize exists.
        set_in_dense("activation", function("builtins", "deserialize")),
        DENSE + "function \"deserialize\" from module \"builtins\" is not one of Keras's own "
                "activation functions"),
    "activation-keras.saving.load_model": (
        set_in_dense("activation", function("keras.saving", "load_model")),
        DENSE + "function \"load_model\" from module \"keras.saving\" is not one of Keras's own "
                "activation functions"),
    "activation-__lambda__": (
        set_in_dense("activation", {"class_name": "__lambda__",
                                    "config": {"code": "MARKER", "defaults": None,
                                               "closure": None}}),
        DENSE + "a marshalled Python function (__lambda__) is code stored in the file"),
    "initializer-os.system": (
        set_in_dense("kernel_initializer", {"module": "os", "class_name": "system",
                                            "config": {"command": "touch MARKER"},
                                            "registered_name": None}),
        DENSE + 'class "system" from module "os" is not part of Keras; tuner-service loads '
                "only Keras's own classes (at config.layers[3].config.kernel_initializer)"),
    "initializer-string": (
        set_in_dense("kernel_initializer", "subprocess.Popen"),
        DENSE + 'kernel_initializer "subprocess.Popen" is not one of Keras\'s own '
                "initializers"),
    "regularizer-builtins.exec": (
        set_in_dense("kernel_regularizer", function("builtins", "exec")),
        DENSE + "function \"exec\" from module \"builtins\" is not one of Keras's own activation "
                "functions (at config.layers[3].config.kernel_regularizer)"),
    "optimizer-outside-compile": (
        set_in_dense("bias_initializer", {"module": "keras.optimizers", "class_name": "Adam",
                                          "config": {}, "registered_name": None}),
        DENSE + "keras.optimizers.Adam is one of Keras's optimizers, which belong in a "
                "compile_config only"),
    "custom-object": (
        the_dense_becomes(module="evil_pkg", class_name="Custom>Evil",
                          registered_name="Custom>Evil"),
        DENSE + "\"Custom>Evil\" is a custom object (module \"evil_pkg\"); tuner-service loads "
                "only Keras's own classes"),
    "registered-custom-object": (
        the_dense_becomes(module="evil_pkg", class_name="Evil",
                          registered_name="evil_pkg>Evil"),
        DENSE + "\"evil_pkg>Evil\" is a custom object (module \"evil_pkg\")"),
    "tfsm-layer": (
        the_dense_becomes(class_name="TFSMLayer",
                          config={"name": "logits", "filepath": "/tmp/saved_model",
                                  "call_endpoint": "serve"}),
        DENSE + "keras.layers.TFSMLayer runs code stored outside the model's config"),
    "lambda-with-a-keras-function": (
        the_dense_becomes(class_name="Lambda",
                          config={"name": "logits", "function": function("builtins",
                                                                          "relu")}),
        DENSE + "keras.layers.Lambda runs code stored outside the model's config"),
    "unknown-keras-class": (
        the_dense_becomes(class_name="NoSuchLayer"),
        DENSE + "keras.layers.NoSuchLayer is not a Keras class (at config.layers[3])"),
    "registered-name-mismatch": (
        the_dense_becomes(registered_name="os.system"),
        DENSE + "keras.layers.Dense carries registered_name \"os.system\", which is not Keras's "
                "name for it"),
    "not-a-model": (
        the_top_is_the_dense,
        "config.json describes \"Dense\", not a Keras model"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_hand_edited_config_is_rejected_before_keras_loads_it(
        genuine: Path, tmp_path: Path, marker: Path, case: str) -> None:
    edit, reason = EDITS[case]
    path = rewrite_config(genuine, tmp_path / "edited.keras",
                          lambda config: edit(config, marker))
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert reason in rejected(lambda: check_config(config))
    assert reason in rejected(lambda: load_checked(path))
    assert not marker.exists()


def test_the_genuine_config_passes_the_allow_list(genuine: Path) -> None:
    with zipfile.ZipFile(genuine) as archive:
        check_config(json.loads(archive.read("config.json")))


# -- Archives --------------------------------------------------------------------------------

def test_archive_problems_reject_the_model(genuine: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(genuine.read_bytes()[: genuine.stat().st_size // 2])
    assert "the file is not a zip archive, or a truncated or damaged one" in rejected(
        lambda: load_checked(path))
    with zipfile.ZipFile(genuine) as original, zipfile.ZipFile(path, "w") as extra:
        for member in original.infolist():
            extra.writestr(member, original.read(member))
        extra.writestr("../evil.py", b"import os")
    assert "'../evil.py', a path that could leave the folder" in rejected(
        lambda: inspect(path, max_params=MAX_PARAMS))


def test_a_file_keras_cannot_load_is_rejected(genuine: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(genuine) as original, zipfile.ZipFile(path, "w") as broken:
        for member in original.infolist():
            data = original.read(member)
            broken.writestr(member, b"not HDF5" if member.filename == "model.weights.h5"
                            else data)
    assert rejected(lambda: load_checked(path)).startswith(
        "the weights file cannot be read: OSError: Unable to synchronously open file")


# -- The child process -----------------------------------------------------------------------

def test_an_inspection_over_its_time_limit_is_rejected(genuine: Path) -> None:
    assert rejected(lambda: inspect_in_child(genuine, max_params=MAX_PARAMS,
                                             timeout_s=0.01)) == (
        "inspection took longer than 0.01 s")


@pytest.mark.slow
def test_the_child_inspects_as_the_worker_does(genuine: Path) -> None:
    assert inspect_in_child(genuine, max_params=MAX_PARAMS, timeout_s=CHILD_TIMEOUT_S) == (
        inspect(genuine, max_params=MAX_PARAMS))


@pytest.mark.slow
def test_the_child_reports_rejections_and_crashes(tmp_path: Path) -> None:
    not_a_zip = tmp_path / "m.keras"
    not_a_zip.write_text("print('hello')\n")
    assert rejected(lambda: inspect_in_child(not_a_zip, max_params=MAX_PARAMS,
                                             timeout_s=CHILD_TIMEOUT_S)).startswith(
        "the file is not a zip archive")
    # A missing file is the worker's fault, not the upload's: the child crashes, and the
    # reason is its last line of stderr.
    crash = rejected(lambda: inspect_in_child(tmp_path / "missing.keras",
                                              max_params=MAX_PARAMS,
                                              timeout_s=CHILD_TIMEOUT_S))
    assert crash.startswith("inspection failed (exit code 1): FileNotFoundError: ")
    assert len(crash) <= 300


@pytest.mark.slow
def test_a_layer_too_large_to_allocate_is_rejected_under_the_childs_memory_limit(
        genuine: Path, tmp_path: Path) -> None:
    """Dense(10**9) on 64 inputs would want 256 GB for its kernel: the child, capped at
    4 GiB of address space, fails to allocate it and the file is rejected (the host never
    sees the allocation)."""
    huge = rewrite_config(genuine, tmp_path / "huge.keras",
                          lambda config: last_dense(config)["config"].update(units=10**9))
    reason = rejected(lambda: inspect_in_child(huge, max_params=MAX_PARAMS,
                                               timeout_s=CHILD_TIMEOUT_S,
                                               max_memory_bytes=4 * 2**30))
    assert "OOM" in reason or "memory" in reason.lower() or "alloc" in reason.lower(), reason


def _with_weights(source: Path, target: Path, change: Callable[[Any], None]) -> Path:
    """A copy of the archive whose weights file went through ``change`` (an h5py File)."""
    import h5py

    weights = target.parent / "weights.h5"
    with zipfile.ZipFile(source) as original:
        weights.write_bytes(original.read("model.weights.h5"))
        with h5py.File(weights, "a") as store:
            change(store)
        with zipfile.ZipFile(target, "w") as edited:
            for member in original.infolist():
                data = (weights.read_bytes() if member.filename == "model.weights.h5"
                        else original.read(member))
                edited.writestr(member.filename, data)
    return target


def test_weights_that_reach_outside_the_file_are_refused(genuine: Path, tmp_path: Path
                                                         ) -> None:
    import h5py

    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as other:
        other["data"] = [1.0, 2.0]

    def external_link(store: Any) -> None:
        store["stolen"] = h5py.ExternalLink(str(secret), "/data")

    def external_storage(store: Any) -> None:
        raw = tmp_path / "raw.bin"
        raw.write_bytes(bytes(8))
        store.create_dataset("outside", shape=(2,), dtype="f4", external=[(str(raw), 0, 8)])

    linked = _with_weights(genuine, tmp_path / "linked.keras", external_link)
    assert "links /stolen elsewhere (ExternalLink)" in rejected(lambda: load_checked(linked))
    stored = _with_weights(genuine, tmp_path / "stored.keras", external_storage)
    assert "dataset /outside is stored outside it" in rejected(lambda: load_checked(stored))
