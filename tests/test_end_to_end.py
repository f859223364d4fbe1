"""Whole jobs through real Celery worker processes and real Keras training.

Runs on SQLite with the embedded folder broker and on PostgreSQL with Redis (the ``stack``
fixture starts one real worker per backend).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from typing import Any

import numpy as np
import pytest

from tests.conftest import WorkerStack
from tuner_service.runtime import build_runtime

pytestmark = pytest.mark.slow

DIGITS = {"model": {"builtin": "logistic_regression"}, "dataset": {"builtin": "digits"}}


def _trials(stack: WorkerStack, job_id: str) -> list[dict[str, Any]]:
    return list(stack.client.get(f"/v1/jobs/{job_id}/trials").json()["items"])


def test_a_job_beats_the_paper_defaults_through_real_workers(stack: WorkerStack) -> None:
    job_id = stack.submit({**DIGITS, "budget": {"n_trials": 6, "epochs": 4},
                           "pruner": "none"})
    job = stack.wait(job_id)
    assert job["status"] == "succeeded", job
    assert job["trials_ended"] == 6 and job["error"] is None
    trials = _trials(stack, job_id)
    assert len(trials) == 6 and all(t["state"] == "complete" for t in trials)
    assert all(len(t["intermediate_values"]) == 4 for t in trials)
    assert all(t["intermediate_values"][-1] == t["value"] for t in trials)
    assert all(t["duration_s"] > 0 and set(t["params"]) == {
        "learning_rate", "beta_1", "beta_2", "epsilon", "decay"} for t in trials)
    report = stack.client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["partial"] is False
    assert report["baseline"]["trial_number"] == 0
    assert report["baseline"]["params"]["learning_rate"] == 0.001
    assert report["best"]["trial_number"] != 0
    assert report["best"]["value"] < report["baseline"]["value"]
    assert report["improvement"]["absolute"] > 0
    assert "keras.optimizers.Adam(" in report["keras_snippet"]


def test_a_diverging_trial_fails_with_its_reason_and_the_job_goes_on(
    stack: WorkerStack,
) -> None:
    job_id = stack.submit({
        **DIGITS,
        "search_space": {"learning_rate": {"low": 1e-4, "high": 1e38, "log": True}},
        "enqueue": [{"learning_rate": 1e37}],
        "budget": {"n_trials": 2, "epochs": 2},
    })
    job = stack.wait(job_id)
    assert job["status"] == "succeeded"
    baseline, diverged = _trials(stack, job_id)
    assert baseline["state"] == "complete"
    assert diverged["state"] == "fail" and diverged["value"] is None
    assert diverged["fail_reason"].startswith("diverged:")
    assert diverged["params"]["learning_rate"] == 1e37


def test_cancel_stops_a_running_job(stack: WorkerStack) -> None:
    job_id = stack.submit({**DIGITS, "budget": {"n_trials": 50, "epochs": 50},
                           "pruner": "none"})
    stack.wait(job_id, until=lambda job: job["trial_counts"]["running"] >= 1)
    response = stack.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.json()["status"] == "cancelled"
    job = stack.wait(job_id, until=lambda job: job["trials_ended"] == 50)
    assert job["status"] == "cancelled"
    trials = _trials(stack, job_id)
    # The pack that was training stops as a whole: every copy early, none left running.
    started = [t for t in trials if t["state"] != "fail"]
    assert 1 <= len(started) < 50 and not any(t["state"] == "running" for t in trials)
    assert all(t["state"] in ("pruned", "complete") for t in started)
    assert all(len(t["intermediate_values"]) < 50 for t in started)  # they stopped early


def _pool_children(worker: subprocess.Popen[bytes]) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_a_killed_worker_process_loses_nothing_of_its_pack(stack: WorkerStack) -> None:
    job_id = stack.submit({**DIGITS, "budget": {"n_trials": 3, "epochs": 30},
                           "pruner": "none"})
    stack.wait(job_id, until=lambda job: job["trial_counts"]["running"] == 3
               and any(len(t["intermediate_values"]) >= 2 for t in _trials(stack, job_id)))
    (child,) = _pool_children(stack.workers[0])
    os.kill(child, signal.SIGKILL)
    job = stack.wait(job_id, timeout_s=300)
    assert job["status"] == "succeeded"
    assert job["packing"]["size"] == 3  # the three slots trained as one pack, twice
    trials = _trials(stack, job_id)
    lost = [t for t in trials if t["state"] == "fail"]
    assert len(lost) == 3 and all(t["fail_reason"].startswith("interrupted") for t in lost)
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(complete) == 3 and all(t["pack_size"] == 3 for t in complete)
    # Each slot of the lost pack trained its own configuration again.
    assert sorted(json.dumps(t["params"], sort_keys=True) for t in lost) == sorted(
        json.dumps(t["params"], sort_keys=True) for t in complete)


def test_a_job_that_cannot_set_up_fails_at_once_with_the_reason(stack: WorkerStack) -> None:
    # An uploaded data set whose stored bytes were lost behind the service's back (a restored
    # backup without them, a wiped folder): no configuration can train on it.
    x = np.random.default_rng(0).normal(size=(40, 3))
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(x[:, 0] > 0).astype(np.int64))
    dataset = stack.client.post("/v1/datasets",
                                files={"file": ("lost.npz", buffer.getvalue())}).json()
    rt = build_runtime(stack.settings)
    try:
        rt.blobs.delete(dataset["sha256"])
    finally:
        rt.close()
    job_id = stack.submit({**DIGITS, "dataset": {"id": dataset["id"]},
                           "budget": {"n_trials": 20, "epochs": 2}})
    # A slot another worker process claimed as the job failed ends a moment after it.
    job = stack.wait(job_id, until=lambda job: job["status"] in ("failed", "succeeded",
                                                                   "cancelled")
                     and job["trials_ended"] == 20)
    assert job["status"] == "failed"
    assert job["error"].startswith(f"cannot read data set 'lost' ({dataset['sha256'][:12]})")
    assert job["trials_ended"] == 20
    trials = _trials(stack, job_id)
    assert [t["state"] for t in trials if t["state"] != "waiting"] == ["fail"]


def test_a_dead_worker_node_is_recovered_by_the_lost_work_loop(stack: WorkerStack) -> None:
    """The whole worker dies (main process and child): no broker redelivers its task soon —
    the folder broker never does, Redis only after its visibility timeout — so the API's
    recovery loop must resend it once the slot's heartbeat is stale."""
    job_id = stack.submit({**DIGITS, "budget": {"n_trials": 2, "epochs": 40},
                           "pruner": "none"})
    stack.wait(job_id, until=lambda job: job["trial_counts"]["running"] >= 1
               and any(len(t["intermediate_values"]) >= 1 for t in _trials(stack, job_id)))
    dead = stack.workers.pop()
    for pid in [*_pool_children(dead), dead.pid]:
        os.kill(pid, signal.SIGKILL)
    dead.wait()
    stack.start_worker()
    job = stack.wait(job_id, timeout_s=300)
    assert job["status"] == "succeeded" and job["trials_ended"] == 2
    trials = _trials(stack, job_id)
    assert [t["state"] for t in trials].count("complete") == 2
    assert all(t["fail_reason"].startswith("interrupted") for t in trials
               if t["state"] == "fail")


def test_a_job_with_every_number_fixed_scores_that_configuration_end_to_end(
    stack: WorkerStack,
) -> None:
    chosen = {"learning_rate": 0.02, "beta_1": 0.85, "beta_2": 0.99, "epsilon": 1e-7,
              "decay": 1e-4}
    job_id = stack.submit({**DIGITS, "search_space": chosen,
                           "budget": {"n_trials": 1, "epochs": 2}})
    job = stack.wait(job_id)
    assert job["status"] == "succeeded", job
    assert job["best"]["params"] == chosen and job["trial_counts"]["complete"] == 1
    report = stack.client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["best"]["params"] == chosen and report["baseline"] is None
    assert "paper defaults lie outside the search space" in report["message"]
    assert "InverseTimeDecay" in report["keras_snippet"]
    for path in ("/", "/v1/jobs", f"/v1/jobs/{job_id}/report.html"):
        assert stack.client.get(path).status_code == 200


def test_a_job_is_confirmed_on_fresh_seeds_before_it_succeeds(stack: WorkerStack) -> None:
    job_id = stack.submit({**DIGITS, "budget": {"n_trials": 4, "epochs": 2},
                           "pruner": "none", "confirm": {"top_k": 2, "seeds": 2},
                           "warm_start": "off"})
    job = stack.wait(job_id)
    assert job["status"] == "succeeded", job
    assert job["trials_ended"] == 4 and job["confirmation"] == {"runs": 6, "runs_ended": 6}
    report = stack.client.get(f"/v1/jobs/{job_id}/report").json()
    confirmed = report["confirmed"]
    assert len(confirmed) == 3 and confirmed[-1]["is_baseline"]
    assert all(len(c["values"]) == 2 and c["sd"] is not None for c in confirmed)
    # Fresh seeds: the defaults' re-trained values are not the search-time run's again.
    assert report["baseline"]["value"] not in confirmed[-1]["values"]
    assert len(set(confirmed[0]["seeds"])) == 2
    recommended = report["recommended"]
    best_mean = min(c["mean"] for c in confirmed)
    assert recommended["mean"] == best_mean
    assert report["confirmation"]["state"] == "done"
    assert report["compute"]["confirm_epochs"] == 12
    assert repr(recommended["params"]["learning_rate"]) in report["keras_snippet"]
    page = stack.client.get(f"/v1/jobs/{job_id}/report.html").text
    assert 'id="recommended"' in page and 'id="confirmed-table"' in page
    assert "Welch" in page or "paper defaults are the recommendation" in page
