"""The one place that turns a job's ``model`` into what it names: a ``ModelDescription``."""

from __future__ import annotations

from typing import Any

from tuner_service.model_sources import files, registry
from tuner_service.model_sources.catalog import builtin_description
from tuner_service.model_sources.types import ModelDescription
from tuner_service.runtime import Runtime
from tuner_service.schemas import ModelSpec, PluginModelSpec, UploadedModelSpec


def describe(rt: Runtime, spec: ModelSpec, *, tenant: str) -> ModelDescription:
    """What ``spec`` names for a job of ``tenant``; ``SpecRefused`` (at ``model...``) when it
    names no usable model."""
    if isinstance(spec, UploadedModelSpec):
        return files.describe(rt, spec, tenant=tenant)
    if isinstance(spec, PluginModelSpec):
        return registry.describe(rt, spec)
    return builtin_description(spec.label)


def stamped_model(spec: ModelSpec, stamped: dict[str, Any] | None) -> ModelDescription:
    """The model a stored job trains: what was stamped on it at submit (jobs stored before
    models had sources were all built-ins)."""
    if stamped is None:
        return builtin_description(spec.label)
    return ModelDescription.model_validate(stamped)
