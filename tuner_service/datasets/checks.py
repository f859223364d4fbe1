"""What every data set format shares once its arrays are read: the types an upload is
described by, and the checks of shapes, targets and values (``finish``).

An uploaded file is untrusted; these checks are what make its arrays fit to train on, whatever
format they came in (``npz_format.py``, ``table_formats.py``; ``formats.py`` is the entry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tuner_service.schemas import TargetKind as TargetKind  # re-exported: the readers use it

Format = Literal["npz", "csv", "parquet"]

_MAX_LISTED = 10
_MAX_ERROR_CHARS = 300
_FINITE_CHUNK = 1 << 20  # elements per NaN/inf scan step: bounds the scan's temporary masks


class DatasetProblem(Exception):
    """A bad upload. status: HTTP status (413, 415 or 422); field: which form field is to blame
    ("file", "label_column" or "task"); message: says what is wrong, readable by a user."""

    def __init__(self, message: str, *, field: str = "file", status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Caps on an upload: what it may inflate to, how many classes, how few examples."""

    max_inflated_bytes: int  # npz and parquet: the declared uncompressed size may not exceed it
    max_classes: int  # more classes than this is refused
    min_examples: int = 10


@dataclass(frozen=True)
class Arrays:
    """The data to train on: features float32 C-contiguous, shape (n, *feature_shape)."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int32] | npt.NDArray[np.float32]  # int32 (n,) | float32 (n, k)
    x_val: npt.NDArray[np.float32] | None  # only when the file has its own validation split
    y_val: npt.NDArray[np.int32] | npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class Description:
    """What an upload holds, known once it has been validated."""

    format: Format
    n_examples: int  # all examples (train + own validation)
    feature_shape: tuple[int, ...]
    target_kind: TargetKind
    n_classes: int | None  # classes only
    n_outputs: int  # classes: n_classes; values: number of regression outputs (>=1)
    splits: dict[str, int]  # {"train": n, "validation": m} for an own split, else {"all": n}


@dataclass(frozen=True)
class Split:
    """One split of the file: its key in Description.splits and its arrays' names."""

    key: str
    x: str
    y: str


WHOLE = (Split("all", "x", "y"),)
OWN_SPLIT = (Split("train", "x_train", "y_train"), Split("validation", "x_val", "y_val"))

_Labels = npt.NDArray[np.int32]
_Values = npt.NDArray[np.float32]



def finish(fmt: Format, arrays: Mapping[str, npt.NDArray[Any]], splits: Sequence[Split],
            task: TargetKind | None, limits: Limits) -> tuple[Arrays, Description]:
    """Validate the loaded arrays (x already float32 and finite) and describe them."""
    check_layout({name: array.shape for name, array in arrays.items()}, splits, limits)
    ys = [arrays[split.y] for split in splits]
    y_names = [split.y for split in splits]
    kind: TargetKind = task or ("values" if any(y.dtype.kind == "f" for y in ys) else "classes")
    targets: Sequence[_Labels] | Sequence[_Values]
    n_classes: int | None
    if kind == "classes":
        targets, n_classes = _class_targets(ys, y_names, limits)
        n_outputs = n_classes
    else:
        targets = _value_targets(ys, y_names)
        n_classes, n_outputs = None, int(targets[0].shape[1])
    xs = [arrays[split.x] for split in splits]
    own = len(splits) == 2
    data = Arrays(x_train=xs[0], y_train=targets[0],
                  x_val=xs[1] if own else None, y_val=targets[1] if own else None)
    counts = {split.key: int(x.shape[0]) for split, x in zip(splits, xs, strict=True)}
    description = Description(
        format=fmt, n_examples=sum(counts.values()), feature_shape=tuple(xs[0].shape[1:]),
        target_kind=kind, n_classes=n_classes, n_outputs=n_outputs, splits=counts)
    return data, description


def check_layout(shapes: Mapping[str, tuple[int, ...]], splits: Sequence[Split],
                  limits: Limits) -> None:
    """Shapes only, so that an .npz is checked from its headers before its data is read."""
    for split in splits:
        _check_split_shapes(split, shapes[split.x], shapes[split.y])
    if len(splits) == 2:
        train, val = splits
        for a, b in ((train.x, val.x), (train.y, val.y)):
            if shapes[a][1:] != shapes[b][1:]:
                raise DatasetProblem(
                    f"{a} and {b} must have the same shape per example; {a} has shape "
                    f"{shapes[a]} and {b} has shape {shapes[b]}")
    first = splits[0]
    n = shapes[first.x][0]
    if n < limits.min_examples:
        where = "" if len(splits) == 1 else f" in {first.x}"
        raise DatasetProblem(f"only {n} examples{where}; at least {limits.min_examples} are "
                             "needed")


def _check_split_shapes(split: Split, x: tuple[int, ...], y: tuple[int, ...]) -> None:
    for name, shape in ((split.x, x), (split.y, y)):
        if math.prod(shape) == 0:
            raise DatasetProblem(f"{name} is empty (shape {shape}); it needs at least one "
                                 "example, and x at least one feature")
    if len(x) < 2:
        raise DatasetProblem(f"{split.x} must be at least 2-D (one row per example, then the "
                             f"features); it has shape {x}")
    if len(y) not in (1, 2):
        raise DatasetProblem(f"{split.y} must be 1-D (n,) or 2-D (n, outputs); it has shape {y}")
    if x[0] != y[0]:
        raise DatasetProblem(f"{split.x} has {x[0]} examples but {split.y} has {y[0]}; they "
                             "must have one row per example")


def _class_targets(ys: Sequence[npt.NDArray[Any]], names: Sequence[str],
                   limits: Limits) -> tuple[list[_Labels], int]:
    """Labels as int32 (n,), and how many classes: exactly 0..K-1, each present somewhere."""
    flat = [_label_vector(y, name) for y, name in zip(ys, names, strict=True)]
    lowest = min(int(y.min()) for y in flat)
    highest = max(int(y.max()) for y in flat)
    if lowest < 0:
        raise DatasetProblem(f"class labels must be 0..K-1; found negative labels (the smallest "
                             f"is {lowest})")
    n_classes = highest + 1
    # Checked before counting, so that a stray huge label cannot make a huge count array.
    if n_classes > limits.max_classes:
        raise DatasetProblem(f"labels go up to {highest}, so {n_classes} classes; at most "
                             f"{limits.max_classes} classes are allowed on this server "
                             "(TUNER_MAX_CLASSES)")
    counts = sum(np.bincount(y.astype(np.int64), minlength=n_classes) for y in flat)
    missing = np.flatnonzero(np.asarray(counts) == 0).tolist()
    if missing:
        raise DatasetProblem(f"class labels must be exactly 0..{highest} with every class "
                             f"present; missing labels: {listing(missing)}")
    if n_classes < 2:
        raise DatasetProblem("at least 2 classes are needed; every label is 0")
    return [np.ascontiguousarray(y, dtype=np.int32) for y in flat], n_classes


def _label_vector(y: npt.NDArray[Any], name: str) -> npt.NDArray[Any]:
    if y.ndim == 2 and y.shape[1] != 1:
        raise DatasetProblem(f"class labels must be one integer per example; {name} has shape "
                             f"{y.shape} (one-hot? save the class indices, y.argmax(axis=1))")
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        # Only task="classes" brings floats here: they must be whole numbers.
        check_finite(y, name)
        fractional = np.flatnonzero(y != np.trunc(y))
        if fractional.size:
            raise DatasetProblem(
                f"task 'classes' needs whole-number labels, but {name} has {fractional.size} "
                f"non-integral value(s), e.g. {y[fractional[0]]}", field="task")
    return y


def _value_targets(ys: Sequence[npt.NDArray[Any]], names: Sequence[str]) -> list[_Values]:
    """Regression targets as float32 (n, outputs)."""
    targets = []
    for y, name in zip(ys, names, strict=True):
        target = float32(y)
        if target.ndim == 1:
            target = target.reshape(-1, 1)
        check_finite(target, name)
        targets.append(target)
    return targets


def check_finite(array: npt.NDArray[np.floating[Any]], name: str) -> None:
    flat = array.reshape(-1)  # a view: the arrays here are contiguous
    nan = inf = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start:start + _FINITE_CHUNK]
        if not np.isfinite(part).all():
            nan += int(np.count_nonzero(np.isnan(part)))
            inf += int(np.count_nonzero(np.isinf(part)))
    if nan or inf:
        counts = (f"{nan} NaN" if nan else "", f"{inf} infinite (±inf)" if inf else "")
        found = " and ".join(count for count in counts if count)
        hint = " (values beyond float32's range, about ±3.4e38, count as infinite)" if inf else ""
        raise DatasetProblem(f"{name} contains {found} value(s); every value must be "
                             f"finite{hint}")


def listing(items: Sequence[object]) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item)
                      for item in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def short_error(exc: BaseException, path: Path | None = None) -> str:
    """A library's error message, on one line, cut short, without the server's file path."""
    text = str(exc)
    if path is not None:
        text = text.replace(str(path), path.name)
    text = " ".join(text.split()) or type(exc).__name__
    if len(text) > _MAX_ERROR_CHARS:
        return text[:_MAX_ERROR_CHARS - 1] + "…"
    return text


def float32(raw: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """C-contiguous float32, copying only when it must."""
    # Values past float32's range become inf: check_finite then refuses them by name, so
    # numpy's overflow warning would only be noise.
    with np.errstate(over="ignore"):
        return np.asarray(raw, dtype=np.float32, order="C")


