"""The sampler under parallel workers: concurrent asks must not hand out the same point."""

from __future__ import annotations

import threading

from tests.api.test_jobs_validation import GOOD
from tuner_service import jobs
from tuner_service.adam import AdamConfig
from tuner_service.db.session import engine_kwargs
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate
from tuner_service.studies import StudyStore, make_sampler
from tuner_service.tenancy import LOCAL

WORKERS = 4


def test_tpe_scores_running_trials_with_the_constant_liar() -> None:
    sampler = make_sampler(JobCreate.model_validate(GOOD), seed=0)
    assert sampler._constant_liar is True


def test_concurrent_asks_of_several_workers_give_distinct_configurations(runtime: Runtime
                                                                          ) -> None:
    spec = JobCreate.model_validate({**GOOD, "budget": {"n_trials": 30, "epochs": 2},
                                     "warm_start": "off"})
    job = jobs.submit_job(runtime, spec, caller=LOCAL)
    for number in range(12):  # past TPE's 10 random startup trials
        asked = runtime.studies.ask(job.study_name, spec, seed_offset=0, worker="w0")
        runtime.studies.tell(job.study_name, asked.number, "complete",
                             abs(asked.config.learning_rate - 0.01) + number * 1e-6)
    url = runtime.settings.resolved_database_url
    stores = [StudyStore(url, engine_kwargs(url, runtime.settings)) for _ in range(WORKERS)]
    barrier = threading.Barrier(WORKERS)
    asked: list[AdamConfig] = []

    def ask(slot: int) -> None:
        barrier.wait()  # every worker asks at the same moment, none has told yet
        asked.append(stores[slot].ask(job.study_name, spec, seed_offset=12 + slot,
                                      worker=f"w{slot}").config)

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(WORKERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for store in stores:
            store.close()
    assert len(asked) == WORKERS
    for i, one in enumerate(asked):
        assert not any(one.is_close_to(other) for other in asked[i + 1:]), asked
