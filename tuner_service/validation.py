"""Checks of a job spec that need the server's settings (caps) or cross fields (enqueue)."""

from __future__ import annotations

from typing import Any

from tuner_service.adam import PAPER_DEFAULTS, PARAM_NAMES
from tuner_service.config import Settings
from tuner_service.confirmation import plan_problems
from tuner_service.datasets.catalog import metric_problem
from tuner_service.model_size import (
    TrainingMemory,
    estimate_training_memory,
    format_bytes,
    shape_problem,
)
from tuner_service.model_sources.catalog import builtin_description
from tuner_service.model_sources.types import ModelDescription
from tuner_service.schemas import DataDescription, JobCreate

Problem = tuple[tuple[str | int, ...], str]


def spec_problems(spec: JobCreate, data: DataDescription, settings: Settings,
                  model: ModelDescription | None = None) -> list[Problem]:
    """Every problem of ``spec`` on ``data`` (with ``model``, what its model spec names; a
    built-in by default) as (field location, message); empty when it is acceptable."""
    model = model or builtin_description(spec.model.label)
    problems: list[Problem] = []
    caps = (("n_trials", settings.max_trials), ("epochs", settings.max_epochs),
            ("batch_size", settings.max_batch_size))
    for field, cap in caps:
        if getattr(spec.budget, field) > cap:
            problems.append((("budget", field), f"must be at most {cap} on this server"))
    planned = len(spec.enqueue) + (1 if spec.search_space.contains(PAPER_DEFAULTS) else 0)
    if spec.enqueue and planned > spec.budget.n_trials:
        problems.append((("enqueue",), f"{planned} configurations to try first (the paper "
                         f"defaults included) exceed budget.n_trials ({spec.budget.n_trials})"))
    for index, partial in enumerate(spec.enqueue):
        for name in PARAM_NAMES:
            value = getattr(partial, name)
            if value is not None and not spec.search_space.contains_value(name, value):
                problems.append((("enqueue", index, name),
                                 f"{value} lies outside the search space of {name}"))
    return problems + plan_problems(spec) + _data_problems(spec, data, model, settings)


def _data_problems(spec: JobCreate, data: DataDescription, model: ModelDescription,
                   settings: Settings) -> list[Problem]:
    """The model, its size and the objective against the data set."""
    metric = metric_problem(spec.objective.metric, data)
    if metric is not None:
        return [(("objective", "metric"), metric)]
    shape = shape_problem(spec.model, model, data)
    if shape is not None:
        return [(("model",), shape)]
    return _size_problems(spec, data, model, settings)


def _size_problems(spec: JobCreate, data: DataDescription, model: ModelDescription,
                   settings: Settings) -> list[Problem]:
    # Refused here rather than found out by a worker child that swaps, is killed by the kernel
    # or, worse, survives holding gigabytes for the trials after it.
    memory = estimate_training_memory(spec, data, model)
    problems: list[Problem] = []
    if memory.params > settings.max_model_params:
        problems.append((("model",), f"{memory.params:,} parameters exceed the limit of "
                         f"{settings.max_model_params:,} on this server "
                         "(TUNER_MAX_MODEL_PARAMS); use fewer or smaller layers"))
    if memory.total_bytes > settings.max_training_memory:
        problems.append((("budget", "batch_size"), _memory_message(spec, memory, settings)))
    return problems


def _memory_message(spec: JobCreate, memory: TrainingMemory, settings: Settings) -> str:
    whole = " (the whole data set)" if memory.batch_size < spec.budget.batch_size else ""
    return (f"one trial needs about {format_bytes(memory.total_bytes)} to train "
            f"({format_bytes(memory.weights_bytes)} for the weights, their gradients and "
            f"Adam's moments, {format_bytes(memory.batch_bytes)} for a batch of "
            f"{memory.batch_size:,} examples{whole}), over the limit of "
            f"{format_bytes(settings.max_training_memory)} on this server "
            "(TUNER_MAX_TRAINING_MEMORY); lower batch_size or use a smaller model")


def as_validation_errors(problems: list[Problem]) -> list[dict[str, Any]]:
    """Problems in the shape of pydantic's errors, located in the request body."""
    return [
        {"loc": ("body", *loc), "msg": message, "type": "value_error", "input": None}
        for loc, message in problems
    ]


class SpecRefused(ValueError):
    """Problems only the stored jobs can show (a ``warm_start`` naming a job that does not
    exist), found by the use case before it writes anything; the API answers them with the
    same 422 as ``spec_problems``."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems
