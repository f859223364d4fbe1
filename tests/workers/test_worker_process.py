"""The Celery worker process itself: children are recycled (TensorFlow leaks memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_stack


@pytest.mark.slow
def test_children_are_recycled_and_every_trial_is_distinct(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = make_settings("sqlite", tmp_path / "home", request, trials_per_worker_child=2)
    with running_stack(settings) as stack:
        job_id = stack.submit({
            "model": {"builtin": "logistic_regression"},
            "dataset": {"builtin": "digits", "max_samples": 200},
            "budget": {"n_trials": 5, "epochs": 1, "pack": 1}, "sampler": "random",
        })
        assert stack.wait(job_id)["status"] == "succeeded"
        trials = stack.client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    # Two trials per child: 5 trials ran in 3 child processes, each with a fresh TensorFlow.
    assert len({t["worker"] for t in trials}) == 3
    assert all(t["worker"].startswith("test-0@") for t in trials)
    # A new child's sampler is seeded by its first slot, so it does not repeat earlier draws.
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 5
