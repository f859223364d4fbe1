"""Checks of a job spec that need the server's settings (caps) or cross fields (enqueue)."""

from __future__ import annotations

from typing import Any

from tuner_service.adam import PAPER_DEFAULTS, PARAM_NAMES
from tuner_service.config import Settings
from tuner_service.schemas import JobCreate

Problem = tuple[tuple[str | int, ...], str]


def spec_problems(spec: JobCreate, settings: Settings) -> list[Problem]:
    """Every problem of ``spec`` as (field location, message); empty when it is acceptable."""
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
    return problems


def as_validation_errors(problems: list[Problem]) -> list[dict[str, Any]]:
    """Problems in the shape of pydantic's errors, located in the request body."""
    return [
        {"loc": ("body", *loc), "msg": message, "type": "value_error", "input": None}
        for loc, message in problems
    ]
