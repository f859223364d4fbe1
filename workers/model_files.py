"""Uploaded ``.keras`` files on the worker: the allow-list check of their config, loading, and
the inspection the service records (run in a child process of its own).

No uploaded file may run code. Keras's ``safe_mode`` refuses marshalled lambdas, but
everything else a config names is imported and instantiated by name. So before Keras
deserialises anything, ``check_config`` walks the whole config.json and accepts only names
that resolve, the way Keras itself would resolve them, to Keras's own layers, models,
initializers, regularizers, constraints, activations, dtype policies and tensor operations
(plus optimizers, losses and metrics inside a ``compile_config``). The allow-set is built by
introspecting Keras's public modules, so it follows the installed Keras version.
"""

from __future__ import annotations

import functools
import inspect as python_inspect
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import h5py
import keras
import keras.src.activations
import keras.src.constraints
import keras.src.initializers
import keras.src.regularizers
from keras.src import api_export
from keras.src.models.functional import Functional
from keras.src.saving import object_registration, saving_lib, serialization_lib

from tuner_service.model_sources.archive import WEIGHTS as WEIGHTS_MEMBER
from tuner_service.model_sources.archive import Archive, ModelFileProblem, read_archive
from tuner_service.model_sources.types import ModelInspection

DEFAULT_MAX_INFLATED_BYTES = 8 << 30
MAX_REASON_CHARS = 300
# Keras's markers for plain data (tensors, arrays, slices) inside a config; none names code.
DATA_MARKERS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__",
                          "__slice__", "__ellipsis__"})
# Exported layers whose whole purpose is to run code that lives outside the config: Python
# bytecode (Lambda), a SavedModel (TFSMLayer), JAX/Flax functions, a pickled torch module.
FOREIGN_CODE_LAYERS = ("Lambda", "TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper")
# A category module's own helpers: they turn names into objects, they are not objects.
CATEGORY_HELPERS = frozenset({"get", "serialize", "deserialize"})
# Config keys whose plain-string values Keras turns into callables, and where it looks them up.
NAMED_CALLABLE_SUFFIXES: tuple[tuple[str, str, ModuleType], ...] = (
    ("activation", "activations", keras.src.activations),
    ("initializer", "initializers", keras.src.initializers),
    ("regularizer", "regularizers", keras.src.regularizers),
    ("constraint", "constraints", keras.src.constraints),
)


class ModelRejected(Exception):
    """The uploaded model cannot be used; str(rejection) is the reason shown to the user."""


# -- The allow-set ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Allowed:
    """One object a config may name: a class, or a function for ``"class_name": "function"``;
    ``kind`` is its category in words; ``compile_only`` ones may appear only inside a
    ``compile_config`` (Keras drops that when loading with compile=False)."""

    obj: object
    kind: str
    compile_only: bool = False


def _public(module: ModuleType) -> Iterator[object]:
    for name in dir(module):
        if not name.startswith("_") and name not in CATEGORY_HELPERS:
            yield getattr(module, name)


def _classes(module: ModuleType, base: type) -> list[type]:
    return [obj for obj in _public(module)
            if python_inspect.isclass(obj) and issubclass(obj, base)]


def _functions(module: ModuleType) -> list[object]:
    return [obj for obj in _public(module) if isinstance(obj, FunctionType)]


def _operation_classes() -> list[type]:
    """The Operation classes behind ``keras.ops`` functions: what the functional API records
    when a model applies ``x + y``, ``x[:, 0]`` or ``keras.ops.relu`` to a tensor."""
    modules = {getattr(obj, "__module__", "") for namespace in
               (keras.ops, *(sub for sub in _public(keras.ops) if isinstance(sub, ModuleType)))
               for obj in _public(namespace)}
    return [cls for name in sorted(modules) if name.startswith("keras.src.ops.")
            for cls in vars(sys.modules[name]).values()
            if python_inspect.isclass(cls) and issubclass(cls, keras.Operation)
            and cls.__module__ == name and not issubclass(cls, keras.layers.Layer)]


def _foreign_code_layers() -> dict[int, str]:
    found = (getattr(keras.layers, name, None) for name in FOREIGN_CODE_LAYERS)
    return {id(cls): f"keras.layers.{cls.__name__}" for cls in found if cls is not None}


@functools.cache
def _allow_set() -> dict[int, _Allowed]:
    """Every object a config may name, by identity (the objects stay referenced here)."""
    foreign = _foreign_code_layers()
    groups: list[tuple[str, list[Any], bool]] = [
        ("layers", [cls for cls in _classes(keras.layers, keras.layers.Layer)
                    if id(cls) not in foreign], False),
        ("models", [keras.Model, keras.Sequential, Functional], False),
        ("initializers", _classes(keras.initializers, keras.initializers.Initializer), False),
        ("regularizers", _classes(keras.regularizers, keras.regularizers.Regularizer), False),
        ("constraints", _classes(keras.constraints, keras.constraints.Constraint), False),
        ("activations", _functions(keras.activations), False),
        ("dtype policies", _classes(keras.dtype_policies, keras.dtype_policies.DTypePolicy),
         False),
        ("operations", _operation_classes(), False),
        ("optimizers", _classes(keras.optimizers, keras.optimizers.Optimizer), True),
        ("learning-rate schedules", _classes(keras.optimizers.schedules,
                                             keras.optimizers.schedules.LearningRateSchedule),
         True),
        ("losses", [*_classes(keras.losses, keras.losses.Loss), *_functions(keras.losses)],
         True),
        ("metrics", [*_classes(keras.metrics, keras.metrics.Metric),
                     *_functions(keras.metrics)], True),
    ]
    allowed: dict[int, _Allowed] = {}
    for kind, objects, compile_only in groups:
        for obj in objects:
            allowed.setdefault(id(obj), _Allowed(obj, kind, compile_only))
    return allowed


@functools.cache
def _named_callables(category: str) -> frozenset[str]:
    """The plain strings Keras accepts for a category (``"relu"``, ``"glorot_uniform"``):
    the keys of its lookup table whose objects are in the allow-set."""
    module = next(module for _, name, module in NAMED_CALLABLE_SUFFIXES if name == category)
    allowed = _allow_set()
    return frozenset(name for name, obj in module.ALL_OBJECTS_DICT.items()
                     if id(obj) in allowed)


# -- The config walk -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Place:
    """Where the walk is: the JSON path, the layer or model it is inside, and whether it is
    inside a compile_config."""

    path: str
    owner: str | None = None
    in_compile: bool = False

    def child(self, key: str | int) -> _Place:
        step = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else key)
        return _Place(self.path + step, self.owner, self.in_compile)

    def refuse(self, what: str) -> ModelRejected:
        where = f"{self.owner}: " if self.owner else ""
        return ModelRejected(f"{where}{what} (at {self.path or 'the top of config.json'})")


def check_config(config: dict[str, Any]) -> None:
    """Walk the whole config.json tree before anything is deserialised; raise ModelRejected
    naming the first class, function, module or name that is not Keras's own, and where."""
    # Iterative, depth first, in document order: the first problem in the file is reported.
    stack: list[tuple[Any, _Place]] = [(config, _Place(""))]
    while stack:
        node, place = stack.pop()
        children: list[tuple[Any, _Place]] = []
        if isinstance(node, list):
            children = [(item, place.child(index)) for index, item in enumerate(node)]
        elif isinstance(node, dict):
            if "class_name" in node:
                place = _check_object(node, place)
            for key, value in node.items():
                if not isinstance(key, str):  # json.loads makes str keys; callers may not
                    raise place.refuse(f"the key {key!r} is not a string")
                inner = place.child(key)
                if isinstance(value, str):
                    _check_named_callable(key, value, inner)
                if key == "compile_config" and "class_name" in node:
                    inner = _Place(inner.path, inner.owner, in_compile=True)
                children.append((value, inner))
        stack.extend(reversed(children))
    top = _resolve_class(config) if isinstance(config.get("class_name"), str) else None
    entry = _allow_set().get(id(top)) if top is not None else None
    if entry is None or entry.kind != "models":
        raise ModelRejected(f"config.json describes {_q(config.get('class_name'))}, not a "
                            "Keras model (Functional, Sequential or Model)")


def _check_object(node: dict[str, Any], place: _Place) -> _Place:
    """Check one serialised object; return the place its children are in."""
    class_name = node["class_name"]
    if not isinstance(class_name, str):
        raise place.refuse(f"class_name {class_name!r} is not a name")
    if class_name == "__lambda__":
        raise place.refuse("a marshalled Python function (__lambda__) is code stored in the "
                           "file; tuner-service never loads one")
    if class_name in DATA_MARKERS:
        return place
    place = _named(node, place)
    module = node.get("module")
    registered = node.get("registered_name")
    if not (registered is None or isinstance(registered, str)):
        raise place.refuse(f"{class_name}: registered_name {_q(registered)} is not a name")
    custom = next((name for name in (class_name, registered) if name and ">" in name), None)
    if custom is not None:
        raise place.refuse(f"{_q(custom)} is a custom object (module {_q(module)}); tuner-service "
                           "loads only Keras's own classes")
    if class_name.startswith("__"):
        raise place.refuse(f"the marker {class_name} is not one of Keras's plain-data markers")
    if class_name == "function":
        _check_function(node, module, registered, place)
        return place
    if not _is_keras_module(module):
        raise place.refuse(f"class {_q(class_name)} from module {_q(module)} is not part of "
                           "Keras; tuner-service loads only Keras's own classes")
    qualified = f"{module}.{class_name}"
    cls = _resolve_class(node)
    foreign = _foreign_code_layers().get(id(cls))
    if foreign is not None:
        raise place.refuse(f"{foreign} runs code stored outside the model's config; "
                           "tuner-service does not load it")
    entry = _allow_set().get(id(cls))
    if cls is None or entry is None or isinstance(entry.obj, FunctionType):
        what = "a Keras class" if cls is None else f"one of {_kinds(place)}"
        raise place.refuse(f"{qualified} is not {what}")
    if entry.compile_only and not place.in_compile:
        raise place.refuse(f"{qualified} is one of Keras's {entry.kind}, which belong in a "
                           "compile_config only")
    if registered not in (None, class_name, object_registration.get_registered_name(cls)):
        raise place.refuse(f"{qualified} carries registered_name {_q(registered)}, which is not "
                           "Keras's name for it")
    if entry.kind == "models":
        return _named(node, place, kind="model")
    return place


# Where a config holds a layer: Functional/Sequential "layers" lists, wrappers' "layer",
# RNNs' "cell", Bidirectional's forward and backward layers.
_LAYER_PLACE = re.compile(r"(^|\.)(layers\[\d+\]|layer|cell|forward_layer|backward_layer)$")


def _named(node: dict[str, Any], place: _Place, *, kind: str = "layer") -> _Place:
    """The place inside an object that sits where a layer (or model) goes and has a name,
    so reasons say which layer they are about."""
    inner = node.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    if isinstance(name, str) and (kind == "model" or _LAYER_PLACE.search(place.path)):
        return _Place(place.path, f'{kind} "{name[:100]}"', place.in_compile)
    return place


def _check_function(node: dict[str, Any], module: Any, registered: str | None,
                    place: _Place) -> None:
    """A serialised function: Keras writes module "builtins" (or a keras.* module) and the
    function's name as its config, and looks the name up among its own built-ins."""
    name = node.get("config")
    kinds = ("activation, loss or metric functions" if place.in_compile
             else "activation functions")
    if not isinstance(name, str):
        raise place.refuse(f"a function config {name!r} is not a function name")
    if registered not in (None, "function", name):
        raise place.refuse(f"function {_q(name)} carries registered_name {_q(registered)}, which "
                           "is not Keras's name for it")
    # Keras resolves "builtins" among its own built-in modules, never Python's builtins.
    candidates = (_resolve_function(name, module)
                  if module == "builtins" or _is_keras_module(module) else [])
    if not candidates or not all(_is_allowed_function(obj, place) for obj in candidates):
        raise place.refuse(f"function {_q(name)} from module {_q(module)} is not one of "
                           f"Keras's own {kinds}")


def _is_allowed_function(obj: object, place: _Place) -> bool:
    entry = _allow_set().get(id(obj))
    return (entry is not None and isinstance(entry.obj, FunctionType)
            and (place.in_compile or not entry.compile_only))


def _check_named_callable(key: str, value: str, place: _Place) -> None:
    """A plain string where Keras expects an activation, initializer, regularizer or
    constraint must be one of the names Keras knows for it."""
    for suffix, category, _ in NAMED_CALLABLE_SUFFIXES:
        if key == suffix or key.endswith(f"_{suffix}"):
            if value not in _named_callables(category):
                raise place.refuse(f'{key} "{value[:100]}" is not one of Keras\'s own '
                                   f"{category}")
            return


def _q(value: Any) -> str:
    """A name from the file as reasons show it: quoted and cut short."""
    return f'"{value[:100]}"' if isinstance(value, str) else repr(value)[:100]


def _is_keras_module(module: Any) -> bool:
    return isinstance(module, str) and (module == "keras" or module.startswith("keras."))


def _keras_symbol(module: str, name: str) -> object | None:
    """What Keras finds for module.name: its exported-name table, then the module itself
    when it is already imported (Keras would import it; an unimported module is unknown)."""
    found: object | None = api_export.get_symbol_from_name(f"{module}.{name}")
    if found is None and module in sys.modules:
        found = vars(sys.modules[module]).get(name)
    return found


def _resolve_class(node: dict[str, Any]) -> object | None:
    # Keras looks registered custom objects up first, by registered_name (class_name when the
    # key is absent); a registry entry would win over the module.
    lookup = node.get("registered_name", node["class_name"])
    custom: object | None = (object_registration.get_registered_object(lookup)
                             if isinstance(lookup, str) else None)
    if custom is not None:
        return custom
    module = node.get("module")
    if not (isinstance(module, str) and _is_keras_module(module)):
        return None
    return _keras_symbol(module, node["class_name"])


def _resolve_function(name: str, module: str) -> list[object]:
    """Every object Keras might return for the function (for "builtins" it tries each of its
    built-in modules in a set's order, so all of them must be acceptable)."""
    custom = object_registration.get_registered_object(name)
    if custom is not None:
        return [custom]
    names = ([f"keras.{category}.{name}" for category in serialization_lib.BUILTIN_MODULES]
             if module == "builtins" else [f"{module}.{name}"])
    found = (api_export.get_symbol_from_name(qualified) for qualified in names)
    return [obj for obj in found if obj is not None]


def _kinds(place: _Place) -> str:
    kinds = sorted({entry.kind for entry in _allow_set().values()
                    if place.in_compile or not entry.compile_only})
    return "Keras's " + ", ".join(kinds[:-1]) + " or " + kinds[-1]


# -- Loading and inspection ------------------------------------------------------------------

def load_checked(path: Path, *,
                 max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> keras.Model:
    """The uploaded model, loaded uncompiled after the archive and allow-list checks; any
    problem, Keras's own errors included, raises ModelRejected."""
    return _load(path, max_inflated_bytes)[0]


def _load(path: Path, max_inflated_bytes: int) -> tuple[keras.Model, Archive]:
    try:
        archive = read_archive(path, max_inflated_bytes=max_inflated_bytes)
    except ModelFileProblem as problem:
        raise ModelRejected(str(problem)) from problem
    check_config(archive.config)
    check_weights(path)
    try:
        # The zip loader itself, given the open file: keras.saving.load_model would pick a
        # loader from the path's suffix (stored uploads have none) and treat some paths as
        # remote. SafeModeScope: safe_mode=True even if something enabled unsafe loading.
        with path.open("rb") as file, serialization_lib.SafeModeScope(safe_mode=True):
            model = saving_lib.load_model(file, compile=False, safe_mode=True)
    except Exception as error:
        raise ModelRejected(_short(f"Keras could not load the model: "
                                   f"{type(error).__name__}: {error}")) from error
    if not isinstance(model, keras.Model):
        raise ModelRejected(f"the file holds a {type(model).__name__}, not a Keras model")
    return model, archive


def check_weights(path: Path) -> None:
    """Refuse a weights file that reaches outside itself: HDF5 external and soft links,
    datasets stored in external files and virtual datasets would fill weights from files on
    the worker (Keras writes none of them)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(WEIGHTS_MEMBER) as member, \
                h5py.File(member, "r") as weights:
            _check_group(weights, "")
    except ModelRejected:
        raise
    except Exception as error:
        raise ModelRejected(_short(f"the weights file cannot be read: "
                                   f"{type(error).__name__}: {error}")) from error


def _check_group(group: h5py.Group, where: str) -> None:
    for name in group:
        at = f"{where}/{name}"
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ModelRejected(f"the weights file links {at} elsewhere "
                                f"({type(link).__name__}); Keras writes no links")
        item = group[name]
        if isinstance(item, h5py.Group):
            _check_group(item, at)
        elif isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
            raise ModelRejected(f"the weights file's dataset {at} is stored outside it")


def inspect(path: Path, *, max_params: int,
            max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> ModelInspection:
    """Load the checked model and describe it: its one input's and one output's shapes, size,
    Keras version, whether it outputs probabilities, its number of layers."""
    model, archive = _load(path, max_inflated_bytes)
    inputs, outputs = _tensors(model, "inputs"), _tensors(model, "outputs")
    for what, tensors in (("inputs", inputs), ("outputs", outputs)):
        if len(tensors) != 1:
            raise ModelRejected(f"the model has {len(tensors)} {what}; tuner-service tunes "
                                "models with one input and one output")
    try:
        n_params = int(model.count_params())
    except ValueError as error:  # an unbuilt model
        raise ModelRejected(_short(f"the model's parameters are unknown: {error}")) from error
    if n_params > max_params:
        raise ModelRejected(f"the model has {n_params:,} parameters, more than this service's "
                            f"limit of {max_params:,} (TUNER_MAX_MODEL_PARAMS)")
    return ModelInspection(
        input_shape=_shape(inputs[0]), output_shape=_shape(outputs[0]), n_params=n_params,
        keras_version=archive.keras_version,
        outputs="probabilities" if applies_probabilities(output_layer(model)) else "logits",
        layers=len(model.layers))


def _tensors(model: keras.Model, which: str) -> list[Any]:
    try:
        tensors = getattr(model, which)
    except (AttributeError, ValueError):  # a Sequential model saved without an input shape
        tensors = None
    if tensors is None:
        raise ModelRejected(f"the model has no defined {which}: save it after building it "
                            "with an input shape (keras.Input)")
    return list(keras.tree.flatten(tensors))


def _shape(tensor: Any) -> tuple[int | None, ...]:
    return tuple(None if size is None else int(size) for size in tensor.shape[1:])


def output_layer(model: keras.Model) -> Any:
    """The layer that computes the model's output, looking inside nested models."""
    layer: Any = model
    while isinstance(layer, keras.Model):
        history = getattr(layer.outputs[0], "_keras_history", None) if layer.outputs else None
        inner = history.operation if history is not None else (
            layer.layers[-1] if layer.layers else None)
        if inner is None or inner is layer:
            return layer
        layer = inner
    return layer


def applies_probabilities(layer: Any) -> bool:
    """True for a softmax layer, or a layer whose activation is softmax or sigmoid."""
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.softmax or activation is keras.activations.sigmoid


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


# -- The child process -----------------------------------------------------------------------

def inspect_in_child(path: Path, *, max_params: int, timeout_s: float,
                     max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
                     max_memory_bytes: int = 0) -> ModelInspection:
    """``inspect`` in a fresh Python process that exits afterwards, under a time limit and
    (``max_memory_bytes`` > 0) an address-space limit: what loading leaves behind (memory,
    threads, Keras's global state) dies with the child."""
    command = [sys.executable, "-m", "workers.inspect_model", str(path),
               "--max-params", str(max_params), "--max-inflated-bytes", str(max_inflated_bytes),
               "--max-memory-bytes", str(max_memory_bytes)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=env,
                              check=False)
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise ModelRejected(f"inspection took longer than {timeout_s:g} s") from None
    return _child_result(done)


def _child_result(done: subprocess.CompletedProcess[bytes]) -> ModelInspection:
    stderr_lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    last_error = stderr_lines[-1] if stderr_lines else "(nothing on stderr)"
    if done.returncode != 0:
        how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
               else f"failed (exit code {done.returncode})")
        raise ModelRejected(_short(f"inspection {how}: {last_error}"))
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1])
        if "rejected" in result:
            raise ModelRejected(str(result["rejected"]))
        return ModelInspection.model_validate(result["inspection"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise ModelRejected(_short(f"inspection printed no result: {last_error}")) from None

