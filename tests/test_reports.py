"""The report's arithmetic on hand-made trial records (the end-to-end agreement with the trials
table is in tests/web/test_report_pages.py), and the Keras snippet run through real Keras."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.api.test_jobs_validation import GOOD
from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.db.models import JobModel
from tuner_service.reports import build_report, keras_snippet
from tuner_service.schemas import DataDescription, DatasetTarget, JobCreate
from tuner_service.studies import TrialRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(status: str = "succeeded", **spec_changes: object) -> JobModel:
    spec = JobCreate.model_validate({**GOOD, **spec_changes})
    return JobModel(id="j1", name="test", status=status, spec=spec.model_dump(mode="json"),
                    study_name="s", n_trials=spec.budget.n_trials, started_at=T0,
                    finished_at=T0 + timedelta(seconds=100) if status != "running" else None)


def _trial(number: int, state: str, curve: list[float], *, lr: float = 0.01,
           end_s: float | None = None, baseline: bool = False) -> TrialRecord:
    config = PAPER_DEFAULTS if baseline else AdamConfig(lr, 0.9, 0.999, 1e-7, 0.0)
    start = T0 + timedelta(seconds=10 * number)
    return TrialRecord(
        number=number, state=state, config=config,
        value=curve[-1] if state == "complete" else None, intermediate_values=tuple(curve),
        started_at=start,
        finished_at=start + timedelta(seconds=end_s) if end_s is not None else None,
        fail_reason=None, is_baseline=baseline, worker="host:1")


def test_a_plateau_spends_and_counts_what_the_trials_did() -> None:
    records = [
        _trial(0, "complete", [1.2, 1.0], end_s=4, baseline=True),
        _trial(1, "complete", [0.5, 0.30], lr=0.02, end_s=4),
        _trial(2, "pruned", [2.0], end_s=1),
        _trial(3, "complete", [0.4, 0.31], lr=0.03, end_s=5),
        _trial(4, "complete", [0.4, 0.305], lr=0.05, end_s=4),
        _trial(5, "fail", [], end_s=0.5),
    ]
    report = build_report(_job(), records, top_k=3)
    assert report.best is not None and report.best.trial_number == 1
    assert report.improvement is not None
    assert report.improvement.absolute == pytest.approx(0.7)
    assert report.improvement.percent == pytest.approx(70.0)
    assert report.compute.trial_epochs == 9
    assert report.compute.worker_seconds == pytest.approx(18.5)
    assert report.compute.wall_seconds == 100
    assert report.best_found is not None
    assert (report.best_found.after_trials, report.best_found.after_trial_epochs) == (2, 4)
    assert [t.trial_number for t in report.top_k] == [1, 4, 3]
    assert report.spread is not None and report.spread.verdict == "plateau"
    assert report.spread.near_best == 3
    assert report.spread.param_ranges["learning_rate"] == (0.02, 0.05)


def test_a_lone_best_is_called_a_spike() -> None:
    records = [_trial(0, "complete", [1.0], end_s=1, baseline=True),
               _trial(1, "complete", [0.2], end_s=1), _trial(2, "complete", [0.5], end_s=1)]
    report = build_report(_job(), records)
    assert report.spread is not None and report.spread.verdict == "spike"
    assert report.spread.relative_range == pytest.approx(4.0)


def test_two_trials_are_too_few_to_judge() -> None:
    records = [_trial(0, "complete", [1.0], end_s=1, baseline=True),
               _trial(1, "complete", [0.2], end_s=1)]
    spread = build_report(_job(), records).spread
    assert spread is not None and spread.verdict == "too_few_trials"


def test_a_running_job_counts_running_time_and_says_it_is_partial() -> None:
    records = [_trial(0, "running", [1.5])]
    now = T0 + timedelta(seconds=7)
    report = build_report(_job("running"), records, now=now)
    assert report.partial and report.best is None and report.top_k == []
    assert report.message == "No trial has completed yet."
    assert report.compute.worker_seconds == 7 and report.compute.wall_seconds == 7


def test_maximizing_accuracy_counts_higher_as_better() -> None:
    job = _job(objective={"metric": "val_accuracy"})
    records = [_trial(0, "complete", [0.80], end_s=1, baseline=True),
               _trial(1, "complete", [0.95], end_s=1)]
    report = build_report(job, records)
    assert report.best is not None and report.best.trial_number == 1
    assert report.improvement is not None and report.improvement.absolute == pytest.approx(0.15)


def test_fixed_numbers_are_reported_as_fixed() -> None:
    report = build_report(_job(search_space={"beta_2": 0.99, "decay": 0.0}), [])
    fixed = {p.name: p.fixed for p in report.parameters}
    assert fixed == {"learning_rate": False, "beta_1": False, "beta_2": True, "epsilon": False,
                     "decay": True}
    assert report.parameters[2].searched is None and report.parameters[0].searched is not None


@pytest.mark.parametrize(("decay", "data"), [
    (0.0, BUILTINS["digits"]),
    (1e-3, DataDescription(source="upload", name="diabetes", id="a" * 32, sha256="b" * 64,
                           size_bytes=123_456, format="csv", label_column="target",
                           n_examples=442, feature_shape=(10,),
                           target=DatasetTarget(kind="values", n_outputs=1))),
])
def test_the_keras_snippet_builds_the_reported_optimizer(decay: float,
                                                         data: DataDescription) -> None:
    keras = pytest.importorskip("keras")
    config = AdamConfig(0.0123, 0.95, 0.9995, 1e-6, decay)
    model = keras.Sequential([keras.Input(data.feature_shape),
                              keras.layers.Flatten(), keras.layers.Dense(data.target.n_outputs)])
    namespace: dict[str, object] = {"model": model}
    snippet = keras_snippet(config, data)
    exec(snippet, namespace)  # noqa: S102 - our own generated code
    assert snippet.startswith(f"# Tuned on data set {data.name!r}")
    if data.sha256:
        assert data.sha256 in snippet and "120.6 KiB" in snippet
    assert model.loss is not None and model.optimizer is namespace["optimizer"]
    optimizer = namespace["optimizer"]
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.95, 0.9995, 1e-6)
    schedule = optimizer._learning_rate  # the schedule object, not its value at step 0
    if decay:
        assert isinstance(schedule, keras.optimizers.schedules.InverseTimeDecay)
        assert float(schedule(100)) == pytest.approx(0.0123 / (1 + decay * 100))
    else:
        assert float(optimizer.learning_rate) == pytest.approx(0.0123)
