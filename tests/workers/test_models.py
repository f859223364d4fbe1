"""Where a trial's model comes from (``workers/models.py``), with real Keras: an uploaded file
starts every trial from the file's weights (``file``) or from the same fresh ones drawn by the
seed (``reinit``); a plugin builds with the trial's hyperparameters; each is compiled with the
loss its outputs need, the optimizer it came with replaced."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tuner_service.adam import PAPER_DEFAULTS
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.schemas import BuiltinDatasetSpec, PluginModelSpec, UploadedModelSpec
from workers.models import FileSource, PluginSource, model_source, outputs_probabilities
from workers.training import TrainSpec, compile_for, make_optimizer, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(123)
    inputs = keras.Input(shape=(8, 8, 1))
    hidden = keras.layers.Dense(6, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    path = tmp_path_factory.mktemp("models") / "net.keras"
    model.save(path)
    return path


def _kernel(model: keras.Model) -> np.ndarray:
    return np.asarray(model.layers[-1].kernel)


def test_file_weights_are_the_files_and_reinit_draws_the_same_fresh_ones(saved: Path) -> None:
    original = _kernel(keras.saving.load_model(saved))
    keras.utils.set_random_seed(0)
    assert np.array_equal(_kernel(FileSource(saved, "file").build((8, 8, 1), 10)), original)
    keras.utils.set_random_seed(0)
    fresh = _kernel(FileSource(saved, "reinit").build((8, 8, 1), 10))
    keras.utils.set_random_seed(0)
    again = _kernel(FileSource(saved, "reinit").build((8, 8, 1), 10))
    assert not np.allclose(fresh, original)
    assert np.array_equal(fresh, again)


def test_the_first_trial_with_file_weights_starts_from_the_file(saved: Path) -> None:
    """Before its first step, the trial's model holds exactly the file's weights: a callback
    reads one weight at the start of training."""
    seen: list[np.ndarray] = []

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs: object = None) -> None:
            seen.append(np.asarray(self.model.layers[-1].kernel).copy())

    spec = TrainSpec(model=UploadedModelSpec(id="a" * 32, weights="file"),
                     dataset=BuiltinDatasetSpec(builtin="digits", max_samples=200),
                     data=BUILTINS["digits"], epochs=1, batch_size=64, metric="val_loss",
                     seed=0, model_file=saved)
    source = model_source(spec.model, saved, {})
    model = source.build((8, 8, 1), 10)
    compile_for(model, "classes", make_optimizer(PAPER_DEFAULTS))
    x = np.zeros((4, 8, 8, 1), dtype="float32")
    model.fit(x, np.zeros(4, dtype="int64"), epochs=1, verbose=0, callbacks=[FirstWeights()])
    assert np.array_equal(seen[0], _kernel(keras.saving.load_model(saved)))
    [result] = train(spec, [PAPER_DEFAULTS], [lambda _epoch, _value: None])
    assert result.state == "complete"


def test_a_plugin_builds_with_the_trials_hyperparameters_and_its_optimizer_is_replaced(
        ) -> None:
    spec = PluginModelSpec(plugin="kt_digits", search_hyperparameters=True)
    model = model_source(spec, None, {"units": 16}).build((8, 8, 1), 10)
    assert model.get_layer("hidden").units == 16
    assert isinstance(model.optimizer, keras.optimizers.SGD)  # as the HyperModel compiled it
    compile_for(model, "classes", make_optimizer(PAPER_DEFAULTS))
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert isinstance(model_source(spec, None, {}), PluginSource)


def test_a_softmax_output_is_trained_on_probabilities_not_logits() -> None:
    inputs = keras.Input(shape=(3,))
    softmax = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    logits = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert outputs_probabilities(softmax) and not outputs_probabilities(logits)
    compile_for(softmax, "classes", make_optimizer(PAPER_DEFAULTS))
    assert softmax.loss.get_config()["from_logits"] is False
    compile_for(logits, "classes", make_optimizer(PAPER_DEFAULTS))
    assert logits.loss.get_config()["from_logits"] is True


def test_an_uploaded_model_without_its_file_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs its file"):
        model_source(UploadedModelSpec(id="b" * 32), None, {})


def test_a_hypermodel_that_cannot_build_with_sampled_values_fails_the_trial_not_the_job(
        ) -> None:
    from workers.training import SetupError, TrialSetupError

    spec = TrainSpec(model=PluginModelSpec(plugin="kt_digits", search_hyperparameters=True),
                     dataset=BuiltinDatasetSpec(builtin="digits", max_samples=100),
                     data=BUILTINS["digits"], epochs=1, batch_size=64, metric="val_loss",
                     seed=0)
    off_grid = PAPER_DEFAULTS.with_model_values({"units": 9})
    with pytest.raises(TrialSetupError, match="9 is not a value of"):
        train(spec, [off_grid], [lambda _epoch, _value: None])
    # Without sampled values nothing else could build it: the search stops.
    broken = TrainSpec(**{**spec.__dict__, "model": PluginModelSpec(plugin="broken")})
    with pytest.raises(SetupError, match="plugin 'broken' failed to load"):
        train(broken, [PAPER_DEFAULTS], [lambda _epoch, _value: None])
