"""Built-in data sets as NumPy arrays, loaded once per worker process.

``digits`` ships with scikit-learn and needs no network. ``mnist``, ``fashion_mnist`` and
``cifar10`` are downloaded by Keras on first use (they need internet access once per machine).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from tuner_service.schemas import DatasetSpec


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
    """Load, subsample and split a data set; the split depends only on ``seed``."""
    x, y = _LOADERS[spec.builtin]()
    if spec.max_samples is not None and spec.max_samples < len(y):
        x, _, y, _ = train_test_split(
            x, y, train_size=spec.max_samples, random_state=seed, stratify=y
        )
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=spec.validation_split, random_state=seed, stratify=y
    )
    return Dataset(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int32),
        x_val=np.ascontiguousarray(x_val, dtype=np.float32),
        y_val=np.ascontiguousarray(y_val, dtype=np.int32),
        n_classes=int(np.max(y)) + 1,
    )


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


_LOADERS = {
    "digits": _digits,
    "mnist": functools.partial(_keras_download, "mnist"),
    "fashion_mnist": functools.partial(_keras_download, "fashion_mnist"),
    "cifar10": functools.partial(_keras_download, "cifar10"),
}
