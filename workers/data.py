"""Built-in data sets as NumPy arrays, loaded once per worker process.

``digits`` ships with scikit-learn and needs no network. ``mnist``, ``fashion_mnist`` and
``cifar10`` are downloaded by Keras on first use (they need internet access once per machine).

A data set with ``holdout > 0`` is cut in two first: the holdout (drawn by ``HOLDOUT_SEED``, the
same for every job, so that every search of every job leaves the same examples unseen) and the
rest, which alone is subsampled and split into training and validation by the job seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from tuner_service.schemas import DatasetSpec

# Not a job's seed: the holdout must be the same whatever seed a job or a benchmark run uses.
HOLDOUT_SEED = 20_251_125


@dataclass(frozen=True)
class Dataset:
    """Images scaled to [0, 1] as (n, height, width, channels) and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x_train.shape[1:])


@functools.lru_cache(maxsize=4)
def load_dataset(spec: DatasetSpec, seed: int) -> Dataset:
    """Load, subsample and split a data set; the split depends only on ``seed``.

    The holdout (``spec.holdout``) is taken away first, whatever the seed.
    """
    x, y, _, _ = _split_off_holdout(spec)
    if spec.max_samples is not None and spec.max_samples < len(y):
        x, _, y, _ = train_test_split(
            x, y, train_size=spec.max_samples, random_state=seed, stratify=y
        )
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=spec.validation_split, random_state=seed, stratify=y
    )
    return Dataset(
        x_train=_images(x_train),
        y_train=_labels(y_train),
        x_val=_images(x_val),
        y_val=_labels(y_val),
        n_classes=int(np.max(y)) + 1,
    )


@functools.lru_cache(maxsize=2)
def load_holdout(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """The examples no trial of any job trains or validates on: (images, labels).

    Depends on the data set and ``spec.holdout`` only (not on a seed, nor on ``max_samples``
    or ``validation_split``). Raises ValueError when ``spec.holdout`` is 0.
    """
    if spec.holdout == 0:
        raise ValueError(f"{spec.builtin} has no holdout: set dataset.holdout above 0")
    _, _, x_holdout, y_holdout = _split_off_holdout(spec)
    return _images(x_holdout), _labels(y_holdout)


def _split_off_holdout(
    spec: DatasetSpec,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) of what jobs may use, then (x, y) of the holdout, stratified by class."""
    x, y = _LOADERS[spec.builtin]()
    if spec.holdout == 0:
        return x, y, x[:0], y[:0]
    x_rest, x_holdout, y_rest, y_holdout = train_test_split(
        x, y, test_size=spec.holdout, random_state=HOLDOUT_SEED, stratify=y
    )
    return x_rest, y_rest, x_holdout, y_holdout


def _images(x: np.ndarray) -> np.ndarray:
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
