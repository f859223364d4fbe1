"""Many workers at once: 8 real processes race over every slot of one job (SQLite and PG).

Each process is handed every slot (in its own order), so each slot is delivered eight times,
mostly while another process runs it. Exactly one delivery may run each slot: the job must end
with exactly n_trials terminal trials, unique numbers, and no slot run twice.
"""

from __future__ import annotations

import multiprocessing
import random

import pytest

from tests.api.test_jobs_validation import GOOD
from tuner_service import jobs, trials
from tuner_service.config import Settings
from tuner_service.db import repository as repo
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime, build_runtime
from tuner_service.schemas import JobCreate
from tuner_service.tenancy import LOCAL

PROCESSES = 8
TRIALS = 40


def _drive(settings_json: str, job_id: str, seed: int) -> int:
    """One worker process: try every slot, run those it claims (the task's own code path)."""
    rt = build_runtime(Settings.model_validate_json(settings_json))
    slots = list(range(TRIALS))
    random.Random(seed).shuffle(slots)
    ran = 0
    try:
        for slot in slots:
            ticket = trials.start_trial(rt, job_id, slot, f"task-{seed}-{slot}")
            if ticket is None:
                continue
            value = 1.0 / (1 + ticket.config.learning_rate)
            for epoch in (1, 2):
                trials.report_epoch(rt, ticket, epoch, value + 1.0 / epoch)
            trials.finish_trial(rt, ticket, trials.TrialOutcome("complete", value))
            ran += 1
    finally:
        rt.close()
    return ran


@pytest.mark.slow
def test_eight_processes_run_every_slot_exactly_once(settings: Settings,
                                                     runtime: Runtime) -> None:
    # Eight waiting (enqueued) trials at the start: every process races to pop one.
    enqueue = [{"learning_rate": 10 ** -k} for k in (1, 1.5, 2, 2.5, 3.5, 4, 4.5)]
    spec = JobCreate.model_validate({**GOOD, "budget": {"n_trials": TRIALS, "epochs": 2},
                                     "pruner": "none", "enqueue": enqueue,
                                     "confirm": False})  # the search's slots alone
    job_id = jobs.submit_job(runtime, spec, caller=LOCAL).id
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        ran = pool.starmap(_drive, [(settings.model_dump_json(), job_id, seed)
                                    for seed in range(PROCESSES)])
    assert sum(ran) == TRIALS
    records = runtime.studies.records(f"tuner-job-{job_id}", spec)
    assert [r.number for r in records] == list(range(TRIALS))
    assert all(r.state == "complete" for r in records)
    with session_scope(runtime.sessions) as session:
        assert repo.slot_states(session, job_id) == {"done": TRIALS}
        assert repo.find_job_or_raise(session, job_id, tenant=None).status == "succeeded"
