"""Built-in data sets: shipped digits, split fixed by the seed; a holdout fixed for every seed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tuner_service.schemas import BuiltinDatasetSpec as DatasetSpec
from workers.data import _LOADERS, BuiltinSource, _all_arrays, load_dataset, load_holdout

DIGITS = BuiltinSource("digits")


def test_digits_split_is_fixed_by_the_seed_and_stratified() -> None:
    spec = DatasetSpec(builtin="digits", validation_split=0.25)
    data = load_dataset(DIGITS, spec, seed=3)
    assert data.input_shape == (8, 8, 1) and set(data.y_val.tolist()) == set(range(10))
    assert len(data.x_val) == 450 and len(data.x_train) == 1797 - 450
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    again = load_dataset(DIGITS, DatasetSpec(builtin="digits", validation_split=0.25), seed=3)
    assert again is data  # cached: a worker loads a data set once
    other = load_dataset(DIGITS, spec, seed=4)
    assert not np.array_equal(other.y_val, data.y_val)
    per_class = np.bincount(np.concatenate([data.y_train, data.y_val]))
    assert np.all(np.abs(np.bincount(data.y_val) - 0.25 * per_class) <= 1)


def test_max_samples_subsamples() -> None:
    data = load_dataset(DIGITS, DatasetSpec(builtin="digits", max_samples=100), seed=0)
    assert len(data.x_train) + len(data.x_val) == 100


def test_no_holdout_gives_the_arrays_of_before_holdouts_existed() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    spec = DatasetSpec(builtin="digits", max_samples=1000, validation_split=0.3)
    assert spec.holdout == 0
    bunch = load_digits()
    # The split as load_dataset made it before the holdout: subsample, then split, by the seed.
    x, _, y, _ = train_test_split(bunch.images[..., np.newaxis] / 16.0, bunch.target,
                                  train_size=1000, random_state=5, stratify=bunch.target)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=5,
                                                      stratify=y)
    data = load_dataset(DIGITS, spec, seed=5)
    for got, expected in [(data.x_train, x_train), (data.x_val, x_val),
                          (data.y_train, y_train), (data.y_val, y_val)]:
        np.testing.assert_array_equal(got, expected)


@pytest.fixture
def numbered() -> Iterator[DatasetSpec]:
    """A data set whose every example carries its own number, so examples can be traced."""

    def load() -> tuple[np.ndarray, np.ndarray]:
        ids = np.arange(600, dtype=np.float64)
        return ids.reshape(-1, 1, 1, 1), (ids % 3).astype(np.int64)

    load_dataset.cache_clear()
    load_holdout.cache_clear()
    _all_arrays.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(_LOADERS, "digits", load)
        yield DatasetSpec(builtin="digits", holdout=0.25)
    load_dataset.cache_clear()
    load_holdout.cache_clear()
    _all_arrays.cache_clear()


def _ids(x: np.ndarray) -> set[int]:
    return {int(v) for v in x.reshape(-1)}


def _ids_to_labels(x: np.ndarray) -> np.ndarray:
    return (x.reshape(-1).astype(np.int64) % 3).astype(np.int32)


def test_holdout_examples_never_reach_training_or_validation(numbered: DatasetSpec) -> None:
    x_holdout, y_holdout = load_holdout(DIGITS, numbered)
    assert len(x_holdout) == 150 and x_holdout.dtype == np.float32
    data = load_dataset(DIGITS, numbered, seed=0)
    assert _ids(x_holdout).isdisjoint(_ids(data.x_train) | _ids(data.x_val))
    assert _ids(x_holdout) | _ids(data.x_train) | _ids(data.x_val) == set(range(600))
    np.testing.assert_array_equal(y_holdout, _ids_to_labels(x_holdout))


def test_the_holdout_is_the_same_for_every_job_seed(numbered: DatasetSpec) -> None:
    holdout = _ids(load_holdout(DIGITS, numbered)[0])
    for seed in (0, 1, 7):
        data = load_dataset(DIGITS, numbered, seed=seed)
        assert _ids(data.x_train) | _ids(data.x_val) == set(range(600)) - holdout
    first, second = load_dataset(DIGITS, numbered, 0), load_dataset(DIGITS, numbered, 1)
    assert _ids(first.x_val) != _ids(second.x_val)
    # Nor does subsampling or the validation fraction move it.
    other = numbered.model_copy(update={"max_samples": 100, "validation_split": 0.5})
    assert _ids(load_holdout(DIGITS, other)[0]) == holdout


def test_the_holdout_is_stratified_and_taken_before_max_samples(numbered: DatasetSpec) -> None:
    _, y_holdout = load_holdout(DIGITS, numbered)
    assert np.bincount(y_holdout).tolist() == [50, 50, 50]
    spec = numbered.model_copy(update={"max_samples": 90})
    data = load_dataset(DIGITS, spec, seed=2)
    assert len(data.x_train) + len(data.x_val) == 90
    assert _ids(load_holdout(DIGITS, spec)[0]).isdisjoint(_ids(data.x_train) | _ids(data.x_val))


def test_a_data_set_without_holdout_has_none_to_load() -> None:
    with pytest.raises(ValueError, match="no holdout"):
        load_holdout(DIGITS, DatasetSpec(builtin="digits"))
