"""Real Keras training on tiny data: every Adam number reaches the optimizer."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.schemas import BuiltinDatasetSpec as DatasetSpec
from tuner_service.schemas import (
    DataDescription,
    LogisticRegressionSpec,
    MLPSpec,
    UploadedDatasetSpec,
)
from workers.training import TrainSpec, make_optimizer, train

SPEC = TrainSpec(
    model=LogisticRegressionSpec(builtin="logistic_regression"),
    dataset=DatasetSpec(builtin="digits", max_samples=300), data=BUILTINS["digits"],
    epochs=2, batch_size=32, metric="val_loss", seed=0,
)


def _weights_after_steps(config: AdamConfig, steps: int = 3) -> np.ndarray:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=make_optimizer(config), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    for _ in range(steps):
        model.train_on_batch(x, y)
    return np.concatenate([w.ravel() for w in model.get_weights()])


def test_paper_defaults_reach_the_optimizer_and_no_decay_keyword_is_used() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when `decay=` is passed (and ignores it)
        optimizer = make_optimizer(PAPER_DEFAULTS)
    assert float(optimizer.learning_rate) == pytest.approx(0.001)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-8)


def test_decay_is_an_inverse_time_schedule_per_step() -> None:
    config = dataclasses.replace(PAPER_DEFAULTS, learning_rate=0.1, decay=0.5)
    optimizer = make_optimizer(config)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.InverseTimeDecay)
    for step in (0, 1, 10, 1000):
        assert float(schedule(step)) == pytest.approx(0.1 / (1 + 0.5 * step), rel=1e-6)
    # And the optimizer really uses it: after 4 training steps its rate is lr / (1 + 4 d).
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    x = np.ones((8, 2), dtype="float32")
    for _ in range(4):
        model.train_on_batch(x, x[:, :1])
    assert int(optimizer.iterations) == 4
    assert float(optimizer.learning_rate) == pytest.approx(0.1 / (1 + 0.5 * 4), rel=1e-6)


@pytest.mark.parametrize(("name", "value"), [("learning_rate", 0.01), ("beta_1", 0.5),
                                             ("beta_2", 0.9), ("epsilon", 0.5),
                                             ("decay", 0.5)])
def test_changing_one_number_changes_the_weights_after_a_few_steps(name: str,
                                                                   value: float) -> None:
    base = _weights_after_steps(PAPER_DEFAULTS)
    changed = _weights_after_steps(dataclasses.replace(PAPER_DEFAULTS, **{name: value}))
    assert not np.allclose(base, changed, rtol=0, atol=1e-7)
    assert np.allclose(base, _weights_after_steps(PAPER_DEFAULTS))  # and it repeats


def test_each_epoch_is_reported_and_the_final_value_is_the_last_one() -> None:
    seen: list[tuple[int, float]] = []
    good = dataclasses.replace(PAPER_DEFAULTS, learning_rate=0.05)
    (result,) = train(SPEC, [good], [lambda e, v: seen.append((e, v)) and None])
    assert result.state == "complete" and result.epochs_run == 2
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert result.value == seen[-1][1] and list(result.history) == [v for _, v in seen]


def test_several_configurations_in_one_call_and_a_better_rate_wins() -> None:
    slow, fast = PAPER_DEFAULTS, dataclasses.replace(PAPER_DEFAULTS, learning_rate=0.05)
    results = train(SPEC, [slow, fast], [lambda e, v: None, lambda e, v: None])
    assert [r.state for r in results] == ["complete", "complete"]
    assert results[1].value is not None and results[0].value is not None
    assert results[1].value < results[0].value


def test_a_hook_can_stop_training_early() -> None:
    spec = dataclasses.replace(SPEC, epochs=5)
    (result,) = train(spec, [PAPER_DEFAULTS], [lambda e, v: "pruned" if e == 2 else None])
    assert (result.state, result.reason, result.epochs_run) == ("pruned", "pruned", 2)


def test_a_diverging_configuration_fails_with_its_reason() -> None:
    diverging = dataclasses.replace(PAPER_DEFAULTS, learning_rate=1e37)
    (result,) = train(SPEC, [diverging], [lambda e, v: None])
    assert result.state == "fail" and result.value is None
    assert result.reason is not None and result.reason.startswith("diverged:")


def test_mlp_and_validation_accuracy() -> None:
    spec = dataclasses.replace(SPEC, model=MLPSpec(builtin="mlp", hidden_units=[16]),
                               metric="val_accuracy", epochs=1)
    (result,) = train(spec, [dataclasses.replace(PAPER_DEFAULTS, learning_rate=0.01)],
                      [lambda e, v: None])
    assert result.state == "complete" and result.value is not None
    assert 0.0 <= result.value <= 1.0


def test_data_that_cannot_be_set_up_raises_setup_error(tmp_path: Path) -> None:
    from workers.training import SetupError

    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    data = BUILTINS["digits"].model_copy(update={"source": "upload", "name": "mine",
                                                 "format": "npz", "sha256": "0" * 64})
    spec = dataclasses.replace(SPEC, data=data, data_file=damaged)
    with pytest.raises(SetupError, match="cannot set up logistic_regression on mine"):
        train(spec, [PAPER_DEFAULTS], [lambda e, v: None])


@pytest.mark.parametrize(("targets", "metric"), [
    ("classes", "val_accuracy"), ("values", "val_mean_absolute_error")])
def test_loss_and_metrics_follow_the_target(tmp_path: Path, targets: str, metric: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) if targets == "classes" else x @ np.arange(5.0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    target = ({"kind": "classes", "n_classes": 2, "n_outputs": 2} if targets == "classes"
              else {"kind": "values", "n_outputs": 1})
    data = DataDescription.model_validate({
        "source": "upload", "name": "mine", "format": "npz", "sha256": "1" * 64,
        "n_examples": 120, "feature_shape": [5], "target": target})
    seen: list[float] = []
    spec = dataclasses.replace(SPEC, dataset=UploadedDatasetSpec(id="a" * 32), data=data,
                               data_file=path, metric=metric, epochs=3)
    (result,) = train(spec, [AdamConfig(0.05, 0.9, 0.999, 1e-7, 0.0)],
                      [lambda e, v: seen.append(v) and None])
    assert result.state == "complete" and len(seen) == 3
    if targets == "classes":
        assert 0.0 <= seen[-1] <= 1.0
    else:
        assert seen[-1] < seen[0]  # the mean absolute error falls as a linear model fits
