"""The service's own work per trial, without training: claim + ask, per-epoch report, tell.

    python bench/bookkeeping.py --trials 20 --epochs 10      # SQLite under a temporary home
    TUNER_DATABASE_URL=postgresql+psycopg://... python bench/bookkeeping.py

Prints one JSON line per phase (mean seconds per trial) and a summary table on stderr. Drives
the same functions the Celery task calls, so this is the floor of the per-trial overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner_service import jobs, trials  # noqa: E402
from tuner_service.config import Settings  # noqa: E402
from tuner_service.db.migrate import upgrade  # noqa: E402
from tuner_service.runtime import build_runtime  # noqa: E402
from tuner_service.schemas import JobCreate  # noqa: E402
from tuner_service.tenancy import LOCAL  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="tuner-bench-")))
    upgrade(settings)
    rt = build_runtime(settings)
    spec = JobCreate.model_validate({
        "model": {"builtin": "logistic_regression"}, "dataset": {"builtin": "digits"},
        "budget": {"n_trials": args.trials, "epochs": args.epochs}, "pruner": "none",
        "confirm": False, "warm_start": "off"})
    job = jobs.submit_job(rt, spec, caller=LOCAL)
    spent = {"start_trial": 0.0, "report_epochs": 0.0, "finish_trial": 0.0}
    for slot in range(args.trials):
        clock = time.perf_counter()
        ticket = trials.start_trial(rt, job.id, slot, f"bench-{slot}")
        assert ticket is not None
        spent["start_trial"] += time.perf_counter() - clock
        clock = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            trials.report_epoch(rt, ticket, epoch, 1.0 / epoch + slot * 1e-3)
        spent["report_epochs"] += time.perf_counter() - clock
        clock = time.perf_counter()
        trials.finish_trial(rt, ticket, trials.TrialOutcome("complete", 0.1 + slot * 1e-3))
        spent["finish_trial"] += time.perf_counter() - clock
    rt.close()
    backend = settings.resolved_database_url.split(":")[0]
    for phase, seconds in spent.items():
        print(json.dumps({"backend": backend, "phase": phase,
                          "seconds_per_trial": round(seconds / args.trials, 5)}))
    total = sum(spent.values()) / args.trials
    print(json.dumps({"backend": backend, "phase": "total", "seconds_per_trial": round(total, 5),
                      "trials": args.trials, "epochs": args.epochs}))
    print(" | ".join(f"{k} {v / args.trials * 1000:.1f} ms" for k, v in spent.items())
          + f" | total {total * 1000:.1f} ms per trial ({backend})", file=sys.stderr)


if __name__ == "__main__":
    main()
