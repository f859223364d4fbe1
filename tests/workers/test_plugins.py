"""Model plugins, discovered and built for real from tests/plugin_package (tuner-test-plugins,
installed editable by scripts/setup.sh with the "dev" extra)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import pytest

from tuner_service.model_sources.types import HyperParameter, PluginDescription, PluginOption
from workers.plugins import PluginError, build_plugin, discover, hyperparameter_values

PACKAGE = "tuner-test-plugins"
PLUGINS = ["broken", "kt_digits", "kt_function", "tiny_mlp", "wide_mlp"]


@pytest.fixture(scope="module")
def found() -> dict[str, PluginDescription]:
    return {d.name: d for d in discover() if d.package == PACKAGE}


def _hidden(model: keras.Model) -> keras.layers.Dense:
    return model.get_layer("hidden")


@pytest.mark.slow
def test_discover_lists_every_entry_point_of_the_package(
        found: dict[str, PluginDescription]) -> None:
    assert sorted(found) == PLUGINS
    assert {d.version for d in found.values()} == {"0.3.1"}
    assert {name: d.kind for name, d in found.items()} == {
        "broken": "build", "kt_digits": "hypermodel", "kt_function": "hypermodel",
        "tiny_mlp": "build", "wide_mlp": "build"}
    names = [d.name for d in discover()]
    assert names == sorted(names)
    assert discover() is discover()  # cached: describing hypermodels builds them


@pytest.mark.slow
def test_build_plugins_describe_their_options(found: dict[str, PluginDescription]) -> None:
    tiny, wide = found["tiny_mlp"], found["wide_mlp"]
    assert tiny.options == (
        PluginOption(name="units", required=False, default=16, type="int"),
        PluginOption(name="activation", required=False, default="relu", type="str"))
    assert tiny.description == "A one-hidden-layer perceptron."
    assert (tiny.any_options, tiny.options_schema, tiny.error) == (False, None, None)
    assert wide.any_options and wide.options == ()
    assert wide.options_schema is not None
    assert wide.options_schema["properties"]["hidden_units"]["type"] == "array"  # type: ignore[index]
    assert tiny.input_shape is None and tiny.hyperparameters == ()


@pytest.mark.slow
def test_hypermodels_describe_their_space_and_shapes(found: dict[str, PluginDescription]) -> None:
    digits = found["kt_digits"]
    assert digits.error is None
    assert {h.name: h for h in digits.hyperparameters} == {
        "units": HyperParameter(name="units", kind="int", default=32, min_value=8,
                                max_value=64, step=8),
        "activation": HyperParameter(name="activation", kind="choice", default="relu",
                                     values=("relu", "tanh")),
        "extra_layer": HyperParameter(name="extra_layer", kind="boolean", default=False),
        "dropout": HyperParameter(name="dropout", kind="float", default=0.1, min_value=0.0,
                                  max_value=0.5),
    }
    assert (digits.input_shape, digits.output_shape) == ((8, 8, 1), (10,))
    assert digits.n_params == 64 * 32 + 32 + 32 * 10 + 10
    function = found["kt_function"]
    assert function.hyperparameters == (
        HyperParameter(name="width", kind="int", default=8, min_value=4, max_value=32, step=1),)
    assert (function.input_shape, function.output_shape, function.n_params) == (
        (64,), (10,), 64 * 8 + 8 + 8 * 10 + 10)
    assert function.description == (
        "A KerasTuner-style build function for the digits flattened to 64 features.")


@pytest.mark.slow
def test_a_broken_entry_point_is_listed_with_its_error(
        found: dict[str, PluginDescription]) -> None:
    broken = found["broken"]
    assert broken.error is not None and broken.error.startswith("AttributeError: ")
    assert "does_not_exist" in broken.error


@pytest.mark.slow
def test_build_plugin_passes_shapes_and_options() -> None:
    model = build_plugin("tiny_mlp", (8, 8), 3, {"units": 5, "activation": "tanh"}, {})
    assert tuple(model.output_shape) == (None, 3)
    assert tuple(model.input_shape) == (None, 8, 8)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [5, 3]
    assert dense[0].activation.__name__ == "tanh"
    wide = build_plugin("wide_mlp", (4,), 2, {"hidden_units": [7, 6]}, {})
    assert wide.count_params() == 4 * 7 + 7 + 7 * 6 + 6 + 6 * 2 + 2


@pytest.mark.slow
def test_pinned_hyperparameters_are_used_and_the_rest_default() -> None:
    pinned = build_plugin("kt_digits", (1,), 1, {}, {"units": 8})
    assert _hidden(pinned).units == 8
    assert _hidden(pinned).activation.__name__ == "relu"
    assert "extra" not in [layer.name for layer in pinned.layers]
    assert _hidden(build_plugin("kt_digits", (1,), 1, {}, {})).units == 32
    extra = build_plugin("kt_digits", (1,), 1, {}, {"activation": "tanh", "extra_layer": True})
    assert extra.get_layer("extra").activation.__name__ == "tanh"
    assert _hidden(build_plugin("kt_function", (1,), 1, {}, {"width": 5})).units == 5


@pytest.mark.slow
def test_hyperparameter_values_fill_in_defaults() -> None:
    assert hyperparameter_values("kt_digits", {"units": 8, "dropout": 0.25}) == {
        "activation": "relu", "units": 8, "extra_layer": False, "dropout": 0.25}
    assert hyperparameter_values("kt_function", {}) == {"width": 8}
    assert hyperparameter_values("tiny_mlp", {}) == {}


@pytest.mark.slow
@pytest.mark.parametrize(("values", "reason"), [
    ({"units": 9}, "9 is not a value of"),  # off its step-8 grid
    ({"units": 72}, "72 is not a value of"),
    ({"extra_layer": 1}, "1 is not a value of"),
    ({"activation": "selu"}, "'selu' is not a value of"),
])
def test_invalid_pinned_values_are_refused(values: dict[str, int | str], reason: str) -> None:
    with pytest.raises(PluginError, match=f"plugin 'kt_digits'.*{reason}".replace("(", r"\(")):
        build_plugin("kt_digits", (1,), 1, {}, values)


@pytest.mark.slow
def test_a_value_the_build_does_not_declare_is_unused() -> None:
    # What a conditional hyperparameter gets when its condition is off.
    assert _hidden(build_plugin("kt_digits", (1,), 1, {}, {"depth": 3, "units": 16})
                   ).units == 16


def test_an_unknown_plugin_names_the_installed_ones() -> None:
    with pytest.raises(PluginError) as error:
        build_plugin("resnet", (8,), 2, {}, {})
    assert str(error.value).startswith("no plugin named 'resnet' is installed on this worker")
    assert "broken, kt_digits, kt_function, tiny_mlp, wide_mlp" in str(error.value)


def test_options_and_hyperparameters_go_to_their_own_kind() -> None:
    with pytest.raises(PluginError, match="KerasTuner hypermodel: it takes no options"
                                          r" \(got: units\)"):
        build_plugin("kt_digits", (64,), 10, {"units": 8}, {})
    with pytest.raises(PluginError, match="'tiny_mlp' is a build function"):
        build_plugin("tiny_mlp", (64,), 10, {}, {"units": 8})
    with pytest.raises(PluginError, match="'broken' failed to load: AttributeError"):
        build_plugin("broken", (64,), 10, {}, {})


@pytest.mark.slow
def test_a_plugin_that_raises_fails_with_its_message() -> None:
    with pytest.raises(PluginError) as error:
        build_plugin("wide_mlp", (4,), 2, {"fail": "on purpose"}, {})
    assert str(error.value) == ("plugin 'wide_mlp' failed to build: "
                                "ValueError: wide_mlp was asked to fail: on purpose")
    assert isinstance(error.value.__cause__, ValueError)
    with pytest.raises(PluginError, match="failed to build: TypeError: .*'depth'"):
        build_plugin("tiny_mlp", (4,), 2, {"depth": 3}, {})


@pytest.fixture
def second_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A second real distribution, after tuner-test-plugins on sys.path, that takes a name
    already taken and declares a plugin that builds no model."""
    (tmp_path / "other_plugins.py").write_text(
        "def tiny_mlp(input_shape, n_outputs):\n    raise AssertionError('never built')\n\n"
        "def not_a_model(input_shape, n_outputs):\n    return [input_shape, n_outputs]\n")
    info = tmp_path / "other_plugins-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-plugins\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text(
        "[tuner_service.models]\ntiny_mlp = other_plugins:tiny_mlp\n"
        "not_a_model = other_plugins:not_a_model\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    discover.cache_clear()
    yield
    discover.cache_clear()
    sys.modules.pop("other_plugins", None)


@pytest.mark.slow
@pytest.mark.usefixtures("second_package")
def test_the_first_package_keeps_a_name() -> None:
    tiny = [d for d in discover() if d.name == "tiny_mlp"]
    assert [(d.package, d.error) for d in tiny] == [
        (PACKAGE, None), ("other-plugins", "name already taken by package tuner-test-plugins")]
    model = build_plugin("tiny_mlp", (4,), 2, {}, {})
    assert tuple(model.output_shape) == (None, 2)
    with pytest.raises(PluginError, match="'not_a_model' built a list, not a keras.Model"):
        build_plugin("not_a_model", (4,), 2, {}, {})
