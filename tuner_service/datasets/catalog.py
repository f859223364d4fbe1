"""What a job's data set is: a built-in's fixed description, or an upload's stamped one.

Known without loading any array (and without TensorFlow), so that the API checks at submit
whether a model, its memory and an objective fit the data.
"""

from __future__ import annotations

from typing import Any

from tuner_service.model_size import format_bytes
from tuner_service.schemas import METRICS, DataDescription, DatasetTarget, JobCreate


def _builtin(name: str, feature_shape: tuple[int, ...], n_examples: int) -> DataDescription:
    return DataDescription(source="builtin", name=name, n_examples=n_examples,
                           feature_shape=feature_shape,
                           target=DatasetTarget(kind="classes", n_classes=10, n_outputs=10))


# n_examples: train and test sets together, as workers/data.py concatenates them.
BUILTINS: dict[str, DataDescription] = {
    "digits": _builtin("digits", (8, 8, 1), 1_797),
    "mnist": _builtin("mnist", (28, 28, 1), 70_000),
    "fashion_mnist": _builtin("fashion_mnist", (28, 28, 1), 70_000),
    "cifar10": _builtin("cifar10", (32, 32, 3), 60_000),
}


def stamped_data(spec: JobCreate, stamped: dict[str, Any] | None) -> DataDescription:
    """A stored job's data: what was stamped on it at submit, or (jobs from before uploads,
    which were all on built-ins) the built-in's description."""
    if stamped is not None:
        return DataDescription.model_validate(stamped)
    builtin = getattr(spec.dataset, "builtin", None)
    if builtin is None:
        raise ValueError("a job on an uploaded data set has no stamped description")
    return BUILTINS[builtin]


def metric_problem(metric: str, data: DataDescription) -> str | None:
    """Why ``metric`` cannot score a job on ``data``, or None when it can."""
    fits = METRICS[data.target.kind]
    if metric in fits:
        return None
    kind = "class labels" if data.target.kind == "classes" else "real values (regression)"
    return (f"{metric} does not fit {data.name!r}, whose targets are {kind}; "
            f"use one of: {', '.join(fits)}")


def data_line(data: DataDescription) -> str:
    """Which data set a result belongs to, in one line: name, hash, size, target."""
    target = (f"{data.target.n_classes} classes" if data.target.kind == "classes"
              else f"{data.target.n_outputs} regression output(s)")
    parts = [f"data set {data.name!r}"]
    if data.sha256 is not None:
        parts.append(f"sha256 {data.sha256}")
    if data.size_bytes is not None:
        parts.append(format_bytes(data.size_bytes))
    parts.append(f"{data.n_examples:,} examples, {target}")
    return ", ".join(parts)
