"""Data sets as NumPy arrays, loaded once per worker process, whatever they come from.

Where the data comes from is a ``DataSource``: a built-in (``digits`` ships with scikit-learn;
``mnist``, ``fashion_mnist`` and ``cifar10`` are downloaded by Keras once per machine) or an
uploaded file that the worker's cache holds on local disk. A new kind of source is one more
class and one more entry in ``SOURCES``; splitting, holdout and subsampling are the same for
all of them.

A data set with ``holdout > 0`` is cut in two first: the holdout (drawn by ``HOLDOUT_SEED``, the
same for every job, so that every search of every job leaves the same examples unseen) and the
rest, which alone is subsampled and split into training and validation by the job seed. A file
with its own validation split keeps it: the holdout and the subsample come out of its training
part.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.model_selection import train_test_split

from tuner_service.datasets import formats
from tuner_service.schemas import BuiltinDatasetSpec, DataDescription, UploadedDatasetSpec

# Not a job's seed: the holdout must be the same whatever seed a job or a benchmark run uses.
HOLDOUT_SEED = 20_251_125
# The API checked the upload against the server's limits already; a worker only reads it.
_TRUSTED = formats.Limits(max_inflated_bytes=2**62, max_classes=2**31)

SplitSpec = BuiltinDatasetSpec | UploadedDatasetSpec


@dataclass(frozen=True)
class Dataset:
    """Training and validation arrays: features as float32, targets as int32 class labels
    (classes) or float32 (n, outputs) values."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x_train.shape[1:])


class DataSource(Protocol):
    """Where a data set's arrays come from; hashable, so each is read once per process."""

    def arrays(self) -> formats.Arrays:
        """Every example (and the file's own validation split, if it has one)."""
        ...


@dataclass(frozen=True)
class BuiltinSource:
    """One of the built-in data sets, by name."""

    name: str

    def arrays(self) -> formats.Arrays:
        x, y = _LOADERS[self.name]()
        return formats.Arrays(_features(x), _labels(y), None, None)


@dataclass(frozen=True)
class UploadedSource:
    """An uploaded file, already on local disk (``workers/dataset_cache.py``)."""

    path: Path
    format: formats.Format
    label_column: str | None
    task: formats.TargetKind

    def arrays(self) -> formats.Arrays:
        arrays, _ = formats.read_dataset(self.path, self.format, label_column=self.label_column,
                                         task=self.task, limits=_TRUSTED)
        return arrays


def _uploaded(data: DataDescription, path: Path | None) -> DataSource:
    if path is None or data.format is None:
        raise ValueError(f"data set {data.name!r} has no local file")
    return UploadedSource(path, data.format,  # type: ignore[arg-type]
                          data.label_column, data.target.kind)


SOURCES: dict[str, Callable[[DataDescription, Path | None], DataSource]] = {
    "builtin": lambda data, _path: BuiltinSource(data.name),
    "upload": _uploaded,
}


def source_for(data: DataDescription, path: Path | None = None) -> DataSource:
    """The source of a job's data; ``path``: an upload's local file."""
    return SOURCES[data.source](data, path)


@functools.lru_cache(maxsize=2)
def _all_arrays(source: DataSource) -> formats.Arrays:
    return source.arrays()


@functools.lru_cache(maxsize=4)
def load_dataset(source: DataSource, spec: SplitSpec, seed: int) -> Dataset:
    """Load, subsample and split a data set; the split depends only on ``seed``.

    The holdout (``spec.holdout``) is taken away first, whatever the seed.
    """
    arrays = _all_arrays(source)
    x, y, _, _ = _split_off_holdout(arrays.x_train, arrays.y_train, spec.holdout)
    if spec.max_samples is not None and spec.max_samples < len(y):
        x, _, y, _ = _split(x, y, train_size=spec.max_samples, random_state=seed)
    if arrays.x_val is not None and arrays.y_val is not None:
        return Dataset(x, y, arrays.x_val, arrays.y_val)
    x_train, x_val, y_train, y_val = _split(x, y, test_size=spec.validation_split,
                                            random_state=seed)
    return Dataset(x_train, y_train, x_val, y_val)


@functools.lru_cache(maxsize=2)
def load_holdout(source: DataSource, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """The examples no trial of any job trains or validates on: (features, targets).

    Depends on the data set and ``spec.holdout`` only (not on a seed, nor on ``max_samples``
    or ``validation_split``). Raises ValueError when ``spec.holdout`` is 0.
    """
    if spec.holdout == 0:
        raise ValueError("this data set has no holdout: set dataset.holdout above 0")
    arrays = _all_arrays(source)
    _, _, x_holdout, y_holdout = _split_off_holdout(arrays.x_train, arrays.y_train,
                                                    spec.holdout)
    return x_holdout, y_holdout


def _split_off_holdout(x: np.ndarray, y: np.ndarray, holdout: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) of what jobs may use, then (x, y) of the holdout, stratified by class."""
    if holdout == 0:
        return x, y, x[:0], y[:0]
    x_rest, x_holdout, y_rest, y_holdout = _split(x, y, test_size=holdout,
                                                  random_state=HOLDOUT_SEED)
    return x_rest, y_rest, x_holdout, y_holdout


def _split(x: np.ndarray, y: np.ndarray, **options: Any) -> list[np.ndarray]:
    """train_test_split, stratified by class when the targets are classes and every class
    has the two examples that takes (a regression's values are never stratified)."""
    if np.issubdtype(y.dtype, np.integer):
        try:
            return list(train_test_split(x, y, stratify=y, **options))
        except ValueError:
            pass  # a class too small to be on both sides: split without it
    return list(train_test_split(x, y, **options))


def _features(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(y, dtype=np.int32)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    return bunch.images[..., np.newaxis] / 16.0, bunch.target


def _keras_download(name: str) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: Keras is heavy, and only these loaders need it (after the worker forks).
    import keras

    module = getattr(keras.datasets, name)
    (x_train, y_train), (x_test, y_test) = module.load_data()
    x = np.concatenate([x_train, x_test]).astype(np.float32) / 255.0
    y = np.concatenate([y_train, y_test]).reshape(-1)
    return (x[..., np.newaxis] if x.ndim == 3 else x), y


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits,
    "mnist": functools.partial(_keras_download, "mnist"),
    "fashion_mnist": functools.partial(_keras_download, "fashion_mnist"),
    "cifar10": functools.partial(_keras_download, "cifar10"),
}
