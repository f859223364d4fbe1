"""Built-in data sets: shipped digits, split fixed by the seed."""

from __future__ import annotations

import numpy as np

from tuner_service.schemas import DatasetSpec
from workers.data import load_dataset


def test_digits_split_is_fixed_by_the_seed_and_stratified() -> None:
    spec = DatasetSpec(builtin="digits", validation_split=0.25)
    data = load_dataset(spec, seed=3)
    assert data.input_shape == (8, 8, 1) and data.n_classes == 10
    assert len(data.x_val) == 450 and len(data.x_train) == 1797 - 450
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    again = load_dataset(DatasetSpec(builtin="digits", validation_split=0.25), seed=3)
    assert again is data  # cached: a worker loads a data set once
    other = load_dataset(spec, seed=4)
    assert not np.array_equal(other.y_val, data.y_val)
    per_class = np.bincount(np.concatenate([data.y_train, data.y_val]))
    assert np.all(np.abs(np.bincount(data.y_val) - 0.25 * per_class) <= 1)


def test_max_samples_subsamples() -> None:
    data = load_dataset(DatasetSpec(builtin="digits", max_samples=100), seed=0)
    assert len(data.x_train) + len(data.x_val) == 100
