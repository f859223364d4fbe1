"""Model plugins: packages on a worker that declare ``tuner_service.models`` entry points.

An entry point resolves to a ``build(input_shape, n_outputs, **options)`` function (kind
"build"), or to a KerasTuner HyperModel class or instance or a ``build(hp)`` function (kind
"hypermodel"), whose hyperparameters are pinned to the values a job gives and default otherwise.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import keras
import keras_tuner

from tuner_service.model_sources.types import (
    HyperParameter,
    PluginDescription,
    PluginOption,
    Scalar,
)
from workers.model_files import applies_probabilities, output_layer

ENTRY_POINT_GROUP = "tuner_service.models"

Kind = Literal["build", "hypermodel"]
HpBuild = Callable[[keras_tuner.HyperParameters], Any]
# KerasTuner's hyperparameter classes, by name: they live in its private ``src`` package.
_HP_KINDS = {"Int": "int", "Float": "float", "Choice": "choice", "Boolean": "boolean",
             "Fixed": "fixed"}
_TYPES = {"int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list",
          "tuple": "list"}


class PluginError(Exception):
    """An unknown plugin, or one that failed to build; ``str()`` is the reason users see."""


@functools.cache
def discover() -> list[PluginDescription]:
    """Every entry point of the group, described, sorted by name; never raises. Cached per
    process, as describing a hypermodel builds it (seconds); do not mutate the result."""
    found: list[PluginDescription] = []
    owners: dict[str, str | None] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        package, version = (ep.dist.name, ep.dist.version) if ep.dist else (None, None)
        base: dict[str, Any] = {"name": ep.name, "package": package, "version": version}
        if ep.name in owners:
            # Jobs name plugins, so a second package cannot take a name; the first one wins.
            error = f"name already taken by package {owners[ep.name]}"
            found.append(PluginDescription(**base, kind="build", error=error))
            continue
        owners[ep.name] = package
        found.append(_describe(ep, base))
    return sorted(found, key=lambda description: description.name)


def build_plugin(name: str, input_shape: tuple[int, ...], n_outputs: int,
                 options: Mapping[str, Any], hp_values: Mapping[str, Scalar]) -> keras.Model:
    """A fresh model from the named plugin: a build function gets the shapes and ``options``;
    a hypermodel fixes its own shapes and gets ``hp_values`` (its defaults elsewhere)."""
    obj, kind = _load(name)
    if kind == "build":
        if hp_values:
            raise PluginError(f"plugin {name!r} is a build function: it has no hyperparameters")
        model = _call(name, lambda: obj(input_shape, n_outputs, **options))
    else:
        if options:
            raise PluginError(f"plugin {name!r} is a KerasTuner hypermodel: it takes no options"
                              f" (got: {', '.join(sorted(options))})")
        model, _ = _build_pinned(name, obj, hp_values)
    return _check_model(name, model)


def hyperparameter_values(name: str, hp_values: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """Every hyperparameter value a build with ``hp_values`` uses, defaults filled in ({} for
    build plugins). Builds the model once: which hyperparameters exist may depend on values."""
    obj, kind = _load(name)
    if kind == "build":
        if hp_values:
            raise PluginError(f"plugin {name!r} is a build function: it has no hyperparameters")
        return {}
    _, hp = _build_pinned(name, obj, hp_values)
    # In the order the build declared them; inactive conditional ones have no value.
    return {h.name: hp.values[h.name] for h in hp.space if h.name in hp.values and hp.is_active(h)}


def _describe(ep: EntryPoint, base: dict[str, Any]) -> PluginDescription:
    kind: Kind = "build"  # the best guess until the entry point loads
    try:
        obj = ep.load()
        kind = _kind(obj)
        doc = (obj if callable(obj) else type(obj)).__doc__
        base["description"] = doc.strip().splitlines()[0] if doc and doc.strip() else None
        details = _options(obj) if kind == "build" else _space(ep.name, obj)
        return PluginDescription(**base, kind=kind, **details)
    except Exception as exc:  # a broken plugin is listed with its reason, never fatal
        return PluginDescription(**base, kind=kind, error=f"{type(exc).__name__}: {exc}")


def _kind(obj: Any) -> Kind:
    if isinstance(obj, keras_tuner.HyperModel) or (
            isinstance(obj, type) and issubclass(obj, keras_tuner.HyperModel)):
        return "hypermodel"
    if not callable(obj):
        raise TypeError(f"expected a function or a KerasTuner HyperModel, got {type(obj)}")
    params = inspect.signature(obj).parameters.values()
    required = [p.name for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return "hypermodel" if required == ["hp"] else "build"


def _options(fn: Callable[..., Any]) -> dict[str, Any]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2 or params[1].kind not in (params[1].POSITIONAL_ONLY,
                                                 params[1].POSITIONAL_OR_KEYWORD):
        raise TypeError("a build function takes (input_shape, n_outputs, **options)")
    options = [_option(p) for p in params[2:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    schema = getattr(fn, "options_schema", None)  # a JSON schema the plugin may declare
    return {"options": tuple(options), "any_options": any(p.kind is p.VAR_KEYWORD for p in params),
            "options_schema": schema if isinstance(schema, dict) else None}


def _option(param: inspect.Parameter) -> PluginOption:
    default = None if param.default is param.empty else param.default
    if isinstance(default, (list, tuple)):
        # Only lists of JSON scalars are shown; anything else is the plugin's own business.
        default = list(default) if all(isinstance(v, Scalar) for v in default) else None
    elif not isinstance(default, Scalar):
        default = None
    source = type(default) if default is not None else param.annotation
    # Annotations are strings under ``from __future__ import annotations``; "list[int]" is a list.
    type_name = source if isinstance(source, str) else getattr(source, "__name__", "")
    return PluginOption(name=param.name, required=param.default is param.empty, default=default,
                        type=_TYPES.get(type_name.split("[")[0].strip(), "any"))


def _space(name: str, obj: Any) -> dict[str, Any]:
    try:
        model, hp = _build_hp(obj, {})  # a fresh HyperParameters registers every default
        model = _check_model(name, model)
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError("a hypermodel must build a model with one input and one output")
        return {"hyperparameters": tuple(_hyperparameter(h) for h in hp.space),
                "input_shape": tuple(model.inputs[0].shape[1:]),
                "output_shape": tuple(model.outputs[0].shape[1:]),
                "n_params": model.count_params(),
                "outputs": ("probabilities" if applies_probabilities(output_layer(model))
                            else "logits")}
    finally:
        keras.backend.clear_session()  # the worker discovers once; free the throwaway model


def _hyperparameter(hp: Any) -> HyperParameter:
    kind = _HP_KINDS.get(type(hp).__name__)
    if kind is None:
        raise TypeError(f"unsupported KerasTuner hyperparameter type {type(hp).__name__}")
    numeric = {key: getattr(hp, key) for key in ("min_value", "max_value", "step", "sampling")
               if kind in ("int", "float") and getattr(hp, key) is not None}
    values = tuple(hp.values) if kind == "choice" else None
    return HyperParameter(name=hp.name, kind=kind, default=hp.default, values=values, **numeric)


def _load(name: str) -> tuple[Any, Kind]:
    eps: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        eps.setdefault(ep.name, ep)  # as discover(): the first package to take a name keeps it
    if name not in eps:
        raise PluginError(f"no plugin named {name!r} is installed on this worker"
                          f" (installed: {', '.join(sorted(eps)) or 'none'})")
    obj = _call(name, eps[name].load, "failed to load")
    return obj, _call(name, lambda: _kind(obj), "is not a model plugin")


def _build_pinned(name: str, obj: Any, pinned: Mapping[str, Scalar],
                  ) -> tuple[Any, keras_tuner.HyperParameters]:
    model, hp = _call(name, lambda: _build_hp(obj, pinned))
    space = {h.name: h for h in hp.space}
    # Checked after the build, as a build may declare hyperparameters depending on values: a
    # value for one this build did not declare (a conditional one whose condition is off
    # with these values) is unused, not wrong.
    for key, value in pinned.items():
        if key in space and not _allowed(space[key], value):
            raise PluginError(f"plugin {name!r}: {value!r} is not a value of {space[key]!r}")
    return model, hp


def _build_hp(obj: Any, pinned: Mapping[str, Scalar]) -> tuple[Any, keras_tuner.HyperParameters]:
    """Builds with ``pinned`` values: KerasTuner registers a hyperparameter with its default
    only when ``hp.values`` lacks its name, so values set before the build are the ones used."""
    hypermodel = obj() if isinstance(obj, type) else obj
    build: HpBuild = (hypermodel.build if isinstance(hypermodel, keras_tuner.HyperModel)
                      else hypermodel)
    hp = keras_tuner.HyperParameters()
    hp.values.update(pinned)
    return build(hp), hp


def _allowed(hp: Any, value: Scalar) -> bool:
    kind = _HP_KINDS.get(type(hp).__name__)
    if kind in ("choice", "fixed"):
        # True == 1 in Python; a bool matches only a bool.
        return any(value == v and isinstance(value, bool) is isinstance(v, bool)
                   for v in hp.values)
    if kind in ("int", "float"):
        number = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if not number or isinstance(value, bool) or not hp.min_value <= value <= hp.max_value:
            return False
        # A linear step is a grid from min_value (a log one multiplies: not checked here).
        on_grid = hp.step is None or hp.sampling != "linear" or kind == "float"
        return on_grid or (value - hp.min_value) % hp.step == 0
    return isinstance(value, bool) if kind == "boolean" else True


def _call(name: str, fn: Callable[[], Any], what: str = "failed to build") -> Any:
    try:
        return fn()
    except Exception as exc:  # the plugin's own code: its error becomes the job's reason
        raise PluginError(f"plugin {name!r} {what}: {type(exc).__name__}: {exc}") from exc


def _check_model(name: str, model: Any) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise PluginError(f"plugin {name!r} built a {type(model).__qualname__}, not a keras.Model")
    return model
