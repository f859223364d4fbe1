"""Packed trials on real Keras and tiny data: each copy of a pack ends as it would alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tuner_service.adam import AdamConfig
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.schemas import BuiltinDatasetSpec as DatasetSpec
from tuner_service.schemas import (
    CNNSpec,
    DataDescription,
    LogisticRegressionSpec,
    MLPSpec,
    UploadedDatasetSpec,
)
from workers import training
from workers.data import load_dataset, source_for
from workers.models import build_model
from workers.packed import PackedTrainer, batch_order, unpackable
from workers.training import EpochHook, TrainResult, TrainSpec, pack_problem, train

SPEC = TrainSpec(
    model=LogisticRegressionSpec(builtin="logistic_regression"),
    dataset=DatasetSpec(builtin="digits", max_samples=400), data=BUILTINS["digits"],
    epochs=3, batch_size=32, metric="val_loss", seed=0,
)
MLP = dataclasses.replace(SPEC, model=MLPSpec(builtin="mlp", hidden_units=[32], dropout=0.3),
                          epochs=2)
CNN = dataclasses.replace(SPEC, model=CNNSpec(builtin="cnn", filters=[4, 8], dense_units=16),
                          dataset=DatasetSpec(builtin="digits", max_samples=200), epochs=2)
# Decay, a huge epsilon, other betas and rates: each of the five numbers differs somewhere.
CONFIGS = [
    AdamConfig(0.01, 0.9, 0.999, 1e-7, 0.0),
    AdamConfig(0.003, 0.8, 0.99, 0.5, 0.0),
    AdamConfig(0.005, 0.95, 0.9, 1e-8, 0.1),
    AdamConfig(0.001, 0.5, 0.999, 1e-3, 0.01),
]


def _go_on(epoch: int, value: float) -> str | None:
    return None


def _alone(spec: TrainSpec, configs: list[AdamConfig]) -> list[TrainResult]:
    return [train(spec, [config], [_go_on])[0] for config in configs]


def _packed(spec: TrainSpec, configs: list[AdamConfig],
            hooks: list[EpochHook] | None = None) -> list[TrainResult]:
    results = train(spec, configs, hooks or [_go_on] * len(configs))
    assert pack_problem(spec) is None  # so train packed them (the answer train found)
    return results


def _largest_difference(packed: list[TrainResult], alone: list[TrainResult]) -> float:
    """The largest relative difference between the two, epoch by epoch; same epochs run."""
    assert [r.epochs_run for r in packed] == [r.epochs_run for r in alone]
    return max(float(np.max(np.abs(np.subtract(p.history, a.history)) / np.abs(a.history)))
               for p, a in zip(packed, alone, strict=True))


@pytest.fixture(scope="module")
def logreg_alone() -> list[TrainResult]:
    return _alone(SPEC, CONFIGS)


def test_the_batch_order_depends_on_seed_and_epoch_only() -> None:
    assert np.array_equal(batch_order(0, 1, 50), batch_order(0, 1, 50))
    assert sorted(batch_order(0, 1, 50)) == list(range(50))
    assert not np.array_equal(batch_order(0, 1, 50), batch_order(0, 2, 50))
    assert not np.array_equal(batch_order(0, 1, 50), batch_order(1, 1, 50))


def test_a_packed_logistic_regression_equals_each_configuration_alone(
        logreg_alone: list[TrainResult]) -> None:
    packed = _packed(SPEC, CONFIGS)
    assert [r.state for r in packed] == ["complete"] * 4
    # Measured: 1.2e-7 (float32 round-off of batched against single kernels).
    assert _largest_difference(packed, logreg_alone) < 1e-4
    assert [r.value for r in packed] == [r.history[-1] for r in packed]


def test_a_pruned_copy_stops_and_the_others_train_every_epoch(
        logreg_alone: list[TrainResult]) -> None:
    seen: list[tuple[int, int]] = []

    def hook(copy: int) -> EpochHook:
        def on_epoch(epoch: int, value: float) -> str | None:
            seen.append((epoch, copy))
            return "pruned" if copy == 1 else None
        return on_epoch

    packed = _packed(SPEC, CONFIGS, [hook(i) for i in range(4)])
    assert (packed[1].state, packed[1].reason, packed[1].epochs_run) == ("pruned", "pruned", 1)
    assert packed[1].history == pytest.approx(logreg_alone[1].history[:1], rel=1e-4)
    assert [r.state for r in packed] == ["complete", "pruned", "complete", "complete"]
    others = [packed[i] for i in (0, 2, 3)]
    assert _largest_difference(others, [logreg_alone[i] for i in (0, 2, 3)]) < 1e-4
    # The active copies' hooks, in copy order, epoch by epoch.
    assert seen == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 2), (2, 3), (3, 0), (3, 2),
                    (3, 3)]


def test_training_ends_when_every_copy_has_stopped() -> None:
    spec = dataclasses.replace(SPEC, epochs=20)
    packed = _packed(spec, CONFIGS, [lambda e, v: "cancelled" if e == 2 else None] * 4)
    assert [(r.state, r.reason, r.epochs_run) for r in packed] == [("pruned", "cancelled", 2)] * 4


def test_a_pack_is_not_fitted_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fit(*args: object) -> TrainResult:
        raise AssertionError("fitted alone")

    assert pack_problem(SPEC) is None
    monkeypatch.setattr(training, "_train_one", no_fit)
    assert [r.state for r in train(SPEC, CONFIGS, [_go_on] * 4)] == ["complete"] * 4


def test_a_later_pack_of_the_same_job_reuses_the_trainer_and_starts_afresh() -> None:
    first = _packed(SPEC, CONFIGS)
    (trainer,) = training._LAST_TRAINER.values()
    keras.backend.clear_session()  # as building another job's model does
    again = _packed(SPEC, CONFIGS[::-1])
    assert list(training._LAST_TRAINER.values()) == [trainer]
    # Its copies were reset and took their new numbers (the position in a pack moves
    # float32 round-off by an ulp or so, hence not ==).
    for mine, theirs in zip(again, first[::-1], strict=True):
        assert mine.history == pytest.approx(theirs.history, rel=1e-6)


@pytest.mark.parametrize("where", ["train_epoch", "evaluate"])
def test_running_out_of_memory_fails_every_copy_still_training(
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    def out_of_memory(*args: object) -> None:
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(PackedTrainer, where, out_of_memory)
    # A job packed before (evaluate) or a new one, whose trial run runs out of memory too.
    spec = SPEC if where == "evaluate" else dataclasses.replace(SPEC, init_seed=7)
    results = train(spec, CONFIGS, [_go_on] * 4)
    assert {(r.state, r.reason, r.epochs_run) for r in results} == {
        ("fail", "out of memory: OOM when allocating tensor", 0)}
    assert training._LAST_TRAINER == {}  # a smaller pack must not find it holding memory
    # Too many copies say nothing against packing: after a trial run out of memory, the
    # answer is not kept but asked again next time.
    known = (training._spec_key(spec), ()) in training._PACK_PROBLEMS
    assert known == (where == "evaluate")


def test_a_packed_mlp_with_dropout_draws_the_masks_it_would_draw_alone() -> None:
    configs = [CONFIGS[2], dataclasses.replace(CONFIGS[3], learning_rate=0.002)]
    packed = _packed(MLP, configs)
    # Measured: 1.1e-7. Without the shared seed state each copy would draw other masks.
    assert _largest_difference(packed, _alone(MLP, configs)) < 1e-4


def test_a_packed_cnn_equals_each_configuration_alone() -> None:
    configs = [CONFIGS[0], CONFIGS[1]]
    packed = _packed(CNN, configs)
    # Measured: 1.1e-7 (Conv2D runs as pfor's while loop over the copies, the rest batched).
    assert _largest_difference(packed, _alone(CNN, configs)) < 1e-4


def test_validation_scores_are_those_keras_evaluate_reports() -> None:
    data = load_dataset(source_for(SPEC.data), SPEC.dataset, SPEC.seed)
    keras.utils.set_random_seed(0)
    model = build_model(LogisticRegressionSpec(builtin="logistic_regression"), data.input_shape,
                        10)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    expected = model.evaluate(data.x_val, data.y_val, batch_size=32, return_dict=True,
                              verbose=0)
    trainer = PackedTrainer(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            "classes", 2)
    trainer.start(CONFIGS[:2])
    scores = trainer.evaluate(tf.constant(data.x_val), tf.constant(data.y_val))
    assert scores["val_loss"] == pytest.approx([expected["loss"]] * 2, rel=1e-6)
    assert scores["val_accuracy"] == pytest.approx([expected["accuracy"]] * 2, abs=1e-6)


def test_regularisers_and_batch_norm_statistics_are_carried_per_copy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int32)

    def model() -> keras.Model:
        # No bias before the batch norm: its gradient is 0 up to round-off, which Adam with a
        # small epsilon scales up to full steps, and the copies would part by chance.
        keras.utils.set_random_seed(3)
        return keras.Sequential([
            keras.Input((6,)), keras.layers.Dense(8, use_bias=False, kernel_regularizer="l2"),
            keras.layers.BatchNormalization(), keras.layers.Dropout(0.2),
            keras.layers.Dense(2, activity_regularizer="l1")])

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainer = PackedTrainer(model(), loss, "classes", 2)
    trainer.start(CONFIGS[:2])
    trainer.train_epoch(tf.constant(x), tf.constant(y), batch_order(0, 0, 96), 16)
    packed = trainer.evaluate(tf.constant(x[:32]), tf.constant(y[:32]))["val_loss"]
    single = model()
    single.compile(optimizer=training.make_optimizer(CONFIGS[1]), loss=loss)
    order = batch_order(0, 0, 96)
    single.fit(x[order], y[order], batch_size=16, shuffle=False, verbose=0)
    alone = single.evaluate(x[:32], y[:32], verbose=0, batch_size=32)
    # Measured: equal to the last bit. Shared statistics would make copy 1 differ from alone.
    assert packed[1] == pytest.approx(alone, rel=1e-5)
    assert abs(packed[0] - packed[1]) > 1e-2


def _regression(tmp_path: Path) -> TrainSpec:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 5)).astype(np.float32)
    path = tmp_path / "line.npz"
    np.savez(path, x=x, y=(x @ np.arange(5.0)).astype(np.float32))
    data = DataDescription.model_validate({
        "source": "upload", "name": "line", "format": "npz", "sha256": "2" * 64,
        "n_examples": 160, "feature_shape": [5], "target": {"kind": "values", "n_outputs": 1}})
    return dataclasses.replace(SPEC, dataset=UploadedDatasetSpec(id="b" * 32), data=data,
                               data_file=path, metric="val_mean_absolute_error", epochs=3)


def test_a_diverging_copy_fails_alone_and_the_others_train_as_without_it(
        tmp_path: Path) -> None:
    spec = _regression(tmp_path)
    sane = [CONFIGS[0], CONFIGS[3]]
    # Weights near 1e20 make squared errors overflow float32: the loss really is inf or NaN.
    exploding = dataclasses.replace(CONFIGS[0], learning_rate=1e20)
    with_it = _packed(spec, [sane[0], exploding, sane[1]])
    assert with_it[1].state == "fail" and with_it[1].value is None
    assert with_it[1].reason in ("diverged: loss is nan at epoch 1",
                                 "diverged: loss is inf at epoch 1")
    kept = [with_it[0], with_it[2]]
    assert [r.state for r in kept] == ["complete", "complete"]
    # Measured: 0 (the same numbers to the last bit, alone and packed without it).
    assert _largest_difference(kept, _alone(spec, sane)) < 1e-6


def test_configurations_of_different_model_values_are_fitted_one_by_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[AdamConfig] = []

    def fit_alone(spec: TrainSpec, config: AdamConfig, hook: EpochHook) -> TrainResult:
        calls.append(config)
        return TrainResult("complete", 0.0, None, 1, (0.0,))

    monkeypatch.setattr(training, "_train_one", fit_alone)
    configs = [CONFIGS[0].with_model_values({"units": 8}),
               CONFIGS[1].with_model_values({"units": 16})]
    train(SPEC, configs, [_go_on] * 2)
    assert calls == configs


def test_the_built_in_models_can_be_packed() -> None:
    assert [pack_problem(spec) for spec in (SPEC, MLP, CNN)] == [None, None, None]


def test_a_model_that_trains_its_own_way_cannot_be_packed() -> None:
    class OwnStep(keras.Model):
        def train_step(self, data: object) -> dict[str, float]:
            return {}

    inputs = keras.Input((3,))
    assert unpackable(OwnStep(inputs, keras.layers.Dense(2)(inputs))) == \
        "the model overrides train_step"
    assert unpackable(keras.Model(inputs, keras.layers.Dense(2)(inputs))) is None


def test_a_stateful_layer_cannot_be_packed() -> None:
    model = keras.Sequential([keras.Input((4, 3), batch_size=2),
                              keras.layers.LSTM(2, stateful=True, name="memory")])
    assert unpackable(model) == "layer 'memory' is stateful"


def test_a_model_that_cannot_be_built_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    data = BUILTINS["digits"].model_copy(update={"source": "upload", "name": "mine",
                                                 "format": "npz", "sha256": "3" * 64})
    problem = pack_problem(dataclasses.replace(SPEC, data=data, data_file=damaged))
    assert problem is not None and problem.startswith("cannot set up logistic_regression")


def test_a_failing_trial_run_becomes_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot(*args: object) -> None:
        raise ValueError("in user code:\n\n    ValueError: No pfor converter for Frobnicate\n")

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    trainer = PackedTrainer(model, keras.losses.MeanSquaredError(), "values", 2)
    trainer.start(CONFIGS[:2])
    x, y = np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)
    assert trainer.trial_run(x, y) is None
    monkeypatch.setattr(PackedTrainer, "_forward", cannot)
    trainer = PackedTrainer(model, keras.losses.MeanSquaredError(), "values", 2)
    assert trainer.trial_run(x, y) == ("TensorFlow cannot train copies of this model side by "
                                       "side: ValueError: No pfor converter for Frobnicate")
