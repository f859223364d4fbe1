"""The built-in architectures, as ``GET /v1/models`` lists them and a job stamps them."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from tuner_service.model_sources.types import ModelDescription
from tuner_service.schemas import Architecture


def builtin_description(name: str) -> ModelDescription:
    """A built-in architecture: it adapts to the data set's shape and target."""
    return ModelDescription(source="builtin", name=name, kind="architecture")


def builtin_catalog() -> list[dict[str, Any]]:
    """Each built-in with its options (the spec's fields) and their defaults."""
    return [_entry(spec) for spec in get_args(Architecture)]


def _entry(spec: type[BaseModel]) -> dict[str, Any]:
    fields = spec.model_fields
    name = get_args(fields["builtin"].annotation)[0]
    options = {key: field.get_default(call_default_factory=True)
               for key, field in fields.items() if key != "builtin"}
    return {"builtin": name, "description": (spec.__doc__ or "").strip().splitlines()[0],
            "options": options}


def model_line(model: ModelDescription) -> str:
    """Which model a result belongs to, in one line."""
    if model.source == "builtin":
        return f"built-in model {model.name!r}"
    if model.source == "file":
        return f"model file {model.name!r}, sha256 {model.sha256}"
    origin = f" from {model.package} {model.version}" if model.package else ""
    searched = (", hyperparameters searched" if model.searched else
                ", hyperparameters at their defaults" if model.hyperparameters else "")
    return f"plugin model {model.name!r}{origin}{searched}"
