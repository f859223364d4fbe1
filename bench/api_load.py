"""Fixed-rate load on the API's read endpoints over a realistic store: p50/p95/p99 and errors.

    python bench/api_load.py                          # 200 jobs, SQLite in a temp dir, 20 s each
    python bench/api_load.py --jobs 30 --duration 5   # a quick look
    python bench/api_load.py --home /tmp/api-store    # build once there; later runs reuse it
    python bench/api_load.py --home DIR --database-url postgresql+psycopg://user:pw@127.0.0.1/db
    python bench/api_load.py --url http://127.0.0.1:8000 [--home DIR]   # a server already up

Builds N jobs of 20-200 finished trials each (seeded; about 5 % still running) through the
service's own ``submit_job``, starts ``tuner_service.cli api`` on a free loopback port, then
loads one endpoint at a time at a fixed rate from a separate process (bench/load_gen.py;
latency counted from each request's scheduled send time, so a slow server cannot hide behind a
lower rate). Prints a JSON line about the store and the machine, then one per endpoint; a table
goes to stderr. Between endpoints it waits until the server's CPU is idle again, so requests
abandoned at the timeout do not bill the next endpoint.

Per endpoint: ``achieved_rps`` counts 2xx/3xx answers within ``--timeout`` per second;
``errors`` by status, plus ``timeout`` (no whole answer in time), ``unsent`` (no connection came
free in time) and ``connection`` (refused, reset); ``late``: sent over 10 ms after its time;
``p50_ms``..``max_ms`` over every scheduled request, a timeout counting as ``--timeout``;
``mean_bytes``: body as sent (gzip); ``server_cpu_ms_per_req``; ``cold_*``: each path fetched
once before the load (unless ``--cold``), so the load meets warm caches; ``gen_lag_*``: how late
the generator itself was (high: the machine is too busy for the figures to mean much;
``loadavg_1m`` shows others' work too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, distribution_to_json
from optuna.storages._rdb import models as optuna_tables
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner_service import jobs  # noqa: E402
from tuner_service.config import Settings  # noqa: E402
from tuner_service.db.migrate import upgrade  # noqa: E402
from tuner_service.db.models import JobModel, TrialSlotModel  # noqa: E402
from tuner_service.db.session import session_scope  # noqa: E402
from tuner_service.runtime import Runtime, build_runtime  # noqa: E402
from tuner_service.schemas import JobCreate  # noqa: E402
from tuner_service.search_space import (  # noqa: E402
    baseline_params,
    config_from_params,
    optuna_distributions,
)
from tuner_service.studies import BASELINE_ATTR, FAIL_REASON_ATTR, WORKER_ATTR  # noqa: E402

LOAD_GEN = ROOT / "bench" / "load_gen.py"
MARKER = "bench-store.json"  # written when a store is complete; its presence allows reuse
PRIME_TIMEOUT_S = 180.0  # a cold report of a 200-trial job may take seconds; priming waits
PRIME_BUDGET_S = 600.0  # priming stops after this long (cold_requests says how far it got)
# The store's running jobs have no workers: keep the API's recovery loop from requeueing them.
STALE_AFTER_S = 365 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One measured route: its label, default rate and the issue's p99 goal at that rate."""

    label: str
    rate: float
    goal_p99_ms: float | None = None


# Measured in this order, cheap ones first (each waits for the server to be idle anyway).
ENDPOINTS = {
    "healthz": Endpoint("GET /healthz", 200),
    "job": Endpoint("GET /v1/jobs/{id}", 200, 50),
    "jobs": Endpoint("GET /v1/jobs?limit=50", 50, 100),
    "report": Endpoint("GET /v1/jobs/{id}/report", 20),
    "report_html": Endpoint("GET /v1/jobs/{id}/report.html", 20, 50),
}


def main() -> None:
    args = _parse_args()
    home = Path(args.home).resolve() if args.home else None
    temporary = home is None and args.url is None
    if temporary:
        home = Path(tempfile.mkdtemp(prefix="tuner-api-load-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        if args.url:
            host, port = _loopback(args.url)
            store, rows = _outside_store(args.url, home, args.database_url)
        else:
            assert home is not None
            settings = Settings(home=home, database_url=args.database_url)
            upgrade(settings)  # the api command does not migrate; a reused store may be older
            store, rows = _own_store(settings, args), job_rows(settings)
            host, port = "127.0.0.1", _free_port()
            server = _start_server(home, args.database_url, port)
        print(json.dumps({"bench": "api_load", **store, **_machine(args, server)}), flush=True)
        targets = _targets(rows, args)
        rows_out = [_measure(name, targets, args, host, port, server) for name in args.endpoints]
        _table(rows_out)
    finally:
        if server is not None:
            _stop_server(server)
        if temporary and home is not None:
            shutil.rmtree(home, ignore_errors=True)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs in a newly built store")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", help="store folder (TUNER_HOME); reused when already built")
    parser.add_argument("--database-url", help="SQLAlchemy URL (PostgreSQL); default SQLite")
    parser.add_argument("--url", help="load this already running loopback server instead")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS),
                        help=f"comma-separated, from: {', '.join(ENDPOINTS)}")
    parser.add_argument("--duration", type=float, default=20.0, help="measured s per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s before each")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply every rate")
    parser.add_argument("--timeout", type=float, default=5.0, help="a slower answer is an error")
    parser.add_argument("--connections", type=int, default=64, help="most open at once")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="longest wait for an idle server between endpoints (s)")
    parser.add_argument("--cold", action="store_true",
                        help="skip fetching each path once before the load (warm caches)")
    parser.add_argument("--report-job", help="job id for the report endpoints "
                        "(default: the finished job with the most trials)")
    args = parser.parse_args()
    chosen = {e.strip() for e in args.endpoints.split(",") if e.strip()}
    unknown = sorted(chosen - set(ENDPOINTS))
    args.endpoints = [name for name in ENDPOINTS if name in chosen]  # cheap ones first
    if unknown or not args.endpoints:
        parser.error(f"unknown endpoints {unknown}; choose from {', '.join(ENDPOINTS)}")
    if min(args.duration, args.rate_scale, args.timeout, args.connections, args.jobs) <= 0:
        parser.error("--duration, --rate-scale, --timeout, --connections and --jobs must be > 0")
    if args.url:
        _loopback(args.url)
    return args


def _own_store(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Reuse the finished store in ``settings.home``, or build one into an empty database."""
    marker = settings.home / MARKER
    if marker.exists():
        stats = json.loads(marker.read_text())
        if stats["jobs"] != args.jobs:
            print(f"note: reusing the store in {settings.home} ({stats['jobs']} jobs; --jobs "
                  "ignored)", file=sys.stderr)
        return {**stats, "reused": True, "home": str(settings.home)}
    if job_count(settings) > 0:
        raise SystemExit(f"{args.database_url or settings.home} already holds jobs but no "
                         f"finished bench store ({marker} is missing): use an empty database "
                         "or another --home")
    print(f"building a store of {args.jobs} jobs in {settings.home} ...", file=sys.stderr)
    stats = build_store(settings, args.jobs, args.seed)
    print(f"store built in {stats['build_s']:.1f} s: {stats['jobs']} jobs, "
          f"{stats['trials']} trials ({stats['backend']})", file=sys.stderr)
    marker.write_text(json.dumps(stats))
    return {**stats, "reused": False, "home": str(settings.home)}


def _outside_store(url: str, home: Path | None, database_url: str | None
                   ) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
    """What a running server serves: read from its store when given (fast, not migrated),
    else listed through the API (slow on a server whose list replays studies)."""
    if home is not None:
        settings = Settings(home=home, database_url=database_url)
        marker = home / MARKER
        stats = json.loads(marker.read_text()) if marker.exists() else {}
        rows = job_rows(settings)
        return {**stats, "jobs": len(rows), "reused": True, "home": str(home)}, rows
    listed = _api_jobs(url)
    states: Counter[str] = Counter()
    for job in listed:
        states.update({k: v for k, v in job["trial_counts"].items() if v})
    store = {"jobs": len(listed), "trials": sum(states.values()),
             "trials_by_state": dict(states), "build_s": None, "reused": True, "home": None}
    return store, [(job["id"], job["status"], job["trials_ended"]) for job in listed]


def _targets(rows: list[tuple[str, str, int]], args: argparse.Namespace) -> dict[str, list[str]]:
    """The paths each endpoint cycles over: every job (shuffled) for a job's status; for the
    reports the finished job with the most trials, unless --report-job names one."""
    if not rows:
        raise SystemExit("the store has no jobs")
    ids = sorted(job_id for job_id, _, _ in rows)
    random.Random(args.seed).shuffle(ids)
    finished = [(trials, job_id) for job_id, status, trials in rows if status == "succeeded"]
    report_job = args.report_job or max(finished or [(0, ids[0])])[1]
    return {
        "healthz": ["/healthz"],
        "job": [f"/v1/jobs/{job_id}" for job_id in ids],
        "jobs": ["/v1/jobs?limit=50"],
        "report": [f"/v1/jobs/{report_job}/report"],
        "report_html": [f"/v1/jobs/{report_job}/report.html"],
    }


# The store ------------------------------------------------------------------------------------
EPOCHS = 10
RUNNING_SHARE = 0.05
CANCELLED_SHARE = 0.02
JOB_GAP = timedelta(minutes=30)
MODELS = [("logistic_regression", "digits"), ("logistic_regression", "mnist"), ("mlp", "mnist"),
          ("mlp", "fashion_mnist"), ("cnn", "cifar10"), ("cnn", "fashion_mnist")]


class _Unsent:
    """The broker while building: workers would have consumed these tasks long ago, and writing
    ~20 000 message files to the folder broker would cost a minute and leave a dead queue."""

    def send_trial(self, job_id: str, slot: int) -> str:
        return f"bench-{job_id}-{slot}"

    def close(self) -> None:
        pass


def job_count(settings: Settings) -> int:
    """How many jobs the database holds."""
    rt = build_runtime(settings)
    try:
        with session_scope(rt.sessions) as session:
            return int(session.scalar(select(func.count()).select_from(JobModel)) or 0)
    finally:
        rt.close()


def job_rows(settings: Settings) -> list[tuple[str, str, int]]:
    """(id, status, n_trials) of every job."""
    rt = build_runtime(settings)
    try:
        with session_scope(rt.sessions) as session:
            rows = session.execute(select(JobModel.id, JobModel.status, JobModel.n_trials))
            return [(job_id, status, n) for job_id, status, n in rows]
    finally:
        rt.close()


def build_store(settings: Settings, n_jobs: int, seed: int) -> dict[str, Any]:
    """Submit ``n_jobs`` jobs and fill their studies with finished (and a few running) trials.

    Jobs go through ``jobs.submit_job``; their trials are made by ``optuna.trial.create_trial``
    and written with Optuna's own ORM models, one transaction per job. (``study.add_trials``
    writes the same rows but costs ~25 ms per trial here, ten minutes for the default store.)
    """
    start = time.perf_counter()
    rt = build_runtime(settings)
    submitter = dataclasses.replace(rt, queue=_Unsent())  # type: ignore[arg-type]
    rng = random.Random(seed)
    now = datetime.now(UTC)
    n_running = max(1, round(n_jobs * RUNNING_SHARE))
    states: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    try:
        for k in range(n_jobs):
            status = ("running" if k >= n_jobs - n_running else
                      "cancelled" if rng.random() < CANCELLED_SHARE else "succeeded")
            spec = _spec(rng, k)
            job = jobs.submit_job(submitter, spec)
            created = now - JOB_GAP * (n_jobs - k)
            trials, started, finished = _trials(rng, spec, status, created, now)
            _fill_study(rt, job.study_name, trials)
            _close_job(rt, job.id, status, trials, (min(created, started), started, finished))
            if k == 0:
                _check_readback(rt, job.study_name, trials)
            states.update(t.state.name.lower() for t in trials)
            statuses[status] += 1
            if (k + 1) % max(1, n_jobs // 10) == 0:
                print(f"  {k + 1}/{n_jobs} jobs, {time.perf_counter() - start:.1f} s",
                      file=sys.stderr)
    finally:
        rt.close()
    return {"jobs": n_jobs, "trials": sum(states.values()), "trials_by_state": dict(states),
            "jobs_by_status": dict(statuses), "seed": seed,
            "build_s": round(time.perf_counter() - start, 2),
            "backend": settings.resolved_database_url.split(":")[0].split("+")[0]}


def _spec(rng: random.Random, k: int) -> JobCreate:
    model, dataset = rng.choice(MODELS)
    space: dict[str, float] = {}
    if rng.random() < 0.15:
        space["beta_2"] = 0.999  # fixed numbers leave their parameter out of the study
    if rng.random() < 0.10:
        space["decay"] = 0.0
    return JobCreate.model_validate({
        "name": f"bench-{k:03d}-{model}-{dataset}", "model": {"builtin": model},
        "dataset": {"builtin": dataset}, "search_space": space,
        "objective": {"metric": "val_accuracy" if rng.random() < 0.2 else "val_loss"},
        "budget": {"n_trials": rng.randint(20, 200), "epochs": EPOCHS},
        "sampler": rng.choice(["tpe", "tpe", "tpe", "random", "cmaes"]),
        "pruner": rng.choice(["median", "median", "median", "hyperband", "none"]), "seed": k,
    })


@dataclasses.dataclass
class _Surface:
    """A job's made-up objective: best near one learning rate, worse with a large epsilon,
    1 - beta_2 or decay; learning curves that level off at the final value."""

    rng: random.Random
    spec: JobCreate
    best_lr: float = 0.0
    floor: float = 0.0
    span: float = 0.0

    def __post_init__(self) -> None:
        self.best_lr = self.rng.uniform(-3.2, -1.8)
        self.floor, self.span = self.rng.uniform(0.05, 0.4), self.rng.uniform(0.8, 2.0)

    def quality(self, params: dict[str, Any]) -> float:
        adam = config_from_params(params, self.spec.search_space)
        miss = (math.log10(adam.learning_rate) - self.best_lr) ** 2 / 1.5
        miss += 0.3 * max(0.0, math.log10(adam.epsilon) + 4)
        miss += 0.5 * max(0.0, math.log10(1 - adam.beta_2) + 1.5) + 30 * adam.decay
        return math.exp(-miss)

    def curve(self, quality: float, epochs: int) -> dict[int, float]:
        loss = self.floor + self.span * (1 - quality) * self.rng.lognormvariate(0, 0.05)
        first = loss + self.span * self.rng.uniform(0.5, 1.0)
        values = {}
        for epoch in range(1, epochs + 1):
            shape = (math.exp(-3 * (epoch - 1) / (EPOCHS - 1)) - math.exp(-3)) / (1 - math.exp(-3))
            noise = self.rng.gauss(0, 0.01) if epoch < EPOCHS else 0.0
            value = (loss + (first - loss) * shape) * (1 + noise)
            values[epoch] = value if self.spec.objective.minimize else max(0.0, 1 - value / 3)
        return values


def _trials(rng: random.Random, spec: JobCreate, status: str, created: datetime,
            now: datetime) -> tuple[list[FrozenTrial], datetime, datetime]:
    """A job's trials in order (trial 0: the paper defaults), with start and end times."""
    n = spec.budget.n_trials
    ended = n if status == "succeeded" else rng.randint(max(1, n // 5), 4 * n // 5)
    running = min(n - ended, rng.randint(1, 2)) if status == "running" else 0
    surface, dists = _Surface(rng, spec), optuna_distributions(spec.search_space)
    workers = [f"bench-node-{w + 1}:{rng.randint(1000, 60000)}" for w in range(2)]
    epoch_s = rng.uniform(0.3, 3.0)
    trials, clocks = [], [0.0, 0.0]
    for number in range(ended + running):
        params = baseline_params(spec.search_space) if number == 0 else _sample(rng, dists)
        assert params is not None
        state, curve, attrs = _outcome(rng, spec, surface, params, number, number >= ended)
        w = clocks.index(min(clocks))
        attrs[WORKER_ATTR] = workers[w]
        took = len(curve) * epoch_s * rng.uniform(0.9, 1.1) + 1.0
        offsets = (clocks[w], None if state == TrialState.RUNNING else clocks[w] + took)
        clocks[w] += took + 0.05
        scored = state in (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: its last epoch
        trial = optuna.trial.create_trial(
            state=state, value=curve[max(curve)] if scored else None, params=params,
            distributions={k: dists[k] for k in params}, user_attrs=attrs,
            intermediate_values=curve)
        trial.number = number
        trials.append((trial, offsets))
    span = max(end for _, (_, end) in trials if end is not None) if ended else 0.0
    if status == "running":
        base, scale = now - timedelta(seconds=span + 5), 1.0
    else:
        base = created + timedelta(seconds=2)
        scale = min(1.0, (now - base).total_seconds() / 2 / max(span, 1.0))
    for trial, (begin, end) in trials:
        trial.datetime_start = _local(base + timedelta(seconds=begin * scale))
        trial.datetime_complete = None if end is None else _local(
            base + timedelta(seconds=end * scale))
    return [t for t, _ in trials], base, base + timedelta(seconds=span * scale)


def _outcome(rng: random.Random, spec: JobCreate, surface: _Surface, params: dict[str, Any],
             number: int, running: bool) -> tuple[TrialState, dict[int, float], dict[str, Any]]:
    """State, per-epoch values and user attributes of one trial."""
    quality = surface.quality(params)
    attrs: dict[str, Any] = {BASELINE_ATTR: True} if number == 0 else {}
    if running:
        return TrialState.RUNNING, surface.curve(quality, rng.randint(0, EPOCHS - 1)), attrs
    high_lr = params.get("learning_rate", 0.0) > 0.03
    if number > 0 and rng.random() < (0.15 if high_lr else 0.02):
        epoch = rng.randint(1, EPOCHS)
        attrs[FAIL_REASON_ATTR] = f"diverged: loss is nan at epoch {epoch}"
        return TrialState.FAIL, surface.curve(quality, epoch - 1), attrs
    if spec.pruner != "none" and number >= 5 and rng.random() < 0.6 * (1 - quality):
        return TrialState.PRUNED, surface.curve(quality, rng.randint(1, EPOCHS - 1)), attrs
    return TrialState.COMPLETE, surface.curve(quality, EPOCHS), attrs


def _sample(rng: random.Random, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Parameters as the sampler would draw them (decay only when switched on)."""
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = rng.choice(dist.choices)
        else:
            low, high = dist.low, dist.high  # type: ignore[attr-defined]
            params[name] = (math.exp(rng.uniform(math.log(low), math.log(high)))
                            if dist.log else rng.uniform(low, high))  # type: ignore[attr-defined]
    if params.get("decay_enabled") is False:
        params.pop("decay", None)
    return params


def _local(moment: datetime) -> datetime:
    """Optuna's trials carry naive local times."""
    return moment.astimezone().replace(tzinfo=None)


def _fill_study(rt: Runtime, study_name: str, trials: list[FrozenTrial]) -> None:
    """Write the trials into the study in one transaction with Optuna's ORM models; the trial
    submit_job enqueued (waiting, number 0) becomes trial 0, as a worker would have run it."""
    storage = rt.studies.storage
    study_id = storage.get_study_id_from_name(study_name)
    table = optuna_tables.TrialModel
    with Session(storage.engine) as session, session.begin():
        existing = {m.number: m for m in session.scalars(
            select(table).where(table.study_id == study_id))}
        taken = {(a.trial_id, a.key) for a in session.scalars(
            select(optuna_tables.TrialUserAttributeModel).where(
                optuna_tables.TrialUserAttributeModel.trial_id.in_(
                    [m.trial_id for m in existing.values()])))}
        rows = []
        for trial in trials:
            row = existing.get(trial.number) or table(study_id=study_id, number=trial.number)
            row.state = trial.state
            row.datetime_start = trial.datetime_start
            row.datetime_complete = trial.datetime_complete
            rows.append(row)
        session.add_all(rows)
        session.flush()
        children: dict[type, list[dict[str, Any]]] = {}
        for row, trial in zip(rows, trials, strict=True):
            for model, values in _child_rows(row.trial_id, trial, taken).items():
                children.setdefault(model, []).extend(values)
        for model, values in children.items():
            if values:
                session.execute(insert(model), values)


def _child_rows(trial_id: int, trial: FrozenTrial, taken: set[tuple[int, str]]
                ) -> dict[type, list[dict[str, Any]]]:
    """Rows of a trial's params, value, per-epoch values and user attributes, as Optuna's
    ``create_new_trial`` writes them."""
    t = optuna_tables
    rows: dict[type, list[dict[str, Any]]] = {
        t.TrialParamModel: [
            {"trial_id": trial_id, "param_name": name,
             "param_value": trial.distributions[name].to_internal_repr(value),
             "distribution_json": distribution_to_json(trial.distributions[name])}
            for name, value in trial.params.items()],
        t.TrialIntermediateValueModel: [
            dict(zip(("intermediate_value", "intermediate_value_type"),
                     t.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value),
                     strict=True), trial_id=trial_id, step=step)
            for step, value in trial.intermediate_values.items()],
        t.TrialUserAttributeModel: [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in trial.user_attrs.items() if (trial_id, key) not in taken],
        t.TrialValueModel: [],
    }
    if trial.value is not None:
        value, kind = t.TrialValueModel.value_to_stored_repr(trial.value)
        rows[t.TrialValueModel].append(
            {"trial_id": trial_id, "objective": 0, "value": value, "value_type": kind})
    return rows


def _check_readback(rt: Runtime, study_name: str, trials: list[FrozenTrial]) -> None:
    """Optuna reads back what was meant: guards the direct writes against schema drift."""
    stored = optuna.load_study(study_name=study_name, storage=rt.studies.storage).trials
    for want, got in zip(trials, stored, strict=True):
        if ((want.number, want.state, want.value, want.params, want.intermediate_values)
                != (got.number, got.state, got.value, got.params, got.intermediate_values)
                or not want.user_attrs.items() <= got.user_attrs.items()):
            raise SystemExit(f"trial {want.number} of {study_name} reads back as {got}")


def _close_job(rt: Runtime, job_id: str, status: str, trials: list[FrozenTrial],
               times: tuple[datetime, datetime, datetime]) -> None:
    """The job's row and slots as its workers would have left them."""
    created, started, finished = times
    ended = sum(1 for t in trials if t.state.is_finished())
    slot = TrialSlotModel
    mine = slot.job_id == job_id
    with session_scope(rt.sessions) as session:
        session.execute(update(JobModel).where(JobModel.id == job_id).values(
            status=status, created_at=created, started_at=started,
            finished_at=None if status == "running" else finished))
        session.execute(update(slot).where(mine, slot.slot < ended).values(
            state="done", attempts=1, trial_number=slot.slot, heartbeat_at=finished,
            finished_at=finished))
        if status == "running":
            session.execute(update(slot).where(mine, slot.slot >= ended, slot.slot < len(trials))
                            .values(state="running", attempts=1, trial_number=slot.slot,
                                    heartbeat_at=datetime.now(UTC)))
        elif status == "cancelled":
            session.execute(update(slot).where(mine, slot.slot >= ended).values(
                state="cancelled", finished_at=finished))


def _api_jobs(url: str) -> list[dict[str, Any]]:
    """Every job the server lists, page by page (slowly, on an unfixed server)."""
    jobs: list[dict[str, Any]] = []
    while True:
        page = json.loads(_get(f"{url.rstrip('/')}/v1/jobs?limit=200&offset={len(jobs)}",
                               PRIME_TIMEOUT_S)[1])
        jobs.extend(page["items"])
        if not page["items"] or len(jobs) >= page["total"]:
            return jobs


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    """A GET with no proxy (loopback only), for priming and listing; errors are answers too."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost" or _is_loopback_ip(host)
    if parts.scheme != "http" or not loopback:
        raise SystemExit(f"--url must be http:// on a loopback address, not {url}")
    # An address, not a name: the load generator then never waits on a resolver.
    return ("127.0.0.1" if host == "localhost" else host), parts.port or 80


def _is_loopback_ip(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(home: Path, database_url: str | None, port: int) -> subprocess.Popen[bytes]:
    """``tuner_service.cli api`` on the store, its log in the store folder; waits for /healthz."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env.update(TUNER_HOME=str(home), TUNER_STALE_AFTER_S=str(STALE_AFTER_S))
    if database_url:
        env["TUNER_DATABASE_URL"] = database_url
    log = home / "api-server.log"
    with open(log, "ab") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "tuner_service.cli", "api", "--port", str(port)],
            env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        with contextlib.suppress(OSError):
            if _get(f"http://127.0.0.1:{port}/healthz", 2)[0] == 200:
                return server
        time.sleep(0.2)
    _stop_server(server)
    tail = log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"the API server did not become healthy; its log ({log}):\n{tail}")


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, then kill: uvicorn waits for requests in flight, which may be many and slow."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _settle(server: subprocess.Popen[bytes] | None, limit_s: float) -> tuple[float, bool]:
    """Wait until the server spends under 10 % of a core; returns (seconds waited, idle)."""
    start = time.monotonic()
    if server is None or _cpu_s(server.pid) is None:
        time.sleep(1.0)  # an outside server: nothing to watch, a pause is all we can do
        return 1.0, True
    while True:
        before = _cpu_s(server.pid) or 0.0
        time.sleep(0.5)
        idle = (_cpu_s(server.pid) or 0.0) - before < 0.05
        waited = time.monotonic() - start
        if idle or waited >= limit_s:
            return round(waited, 1), idle


def _measure(name: str, targets: dict[str, list[str]], args: argparse.Namespace, host: str,
             port: int, server: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    """Prime the paths, let the server settle, run the load, print the endpoint's line."""
    endpoint, paths = ENDPOINTS[name], targets[name]
    row: dict[str, Any] = {"endpoint": endpoint.label, "name": name,
                           "target_rps": round(endpoint.rate * args.rate_scale, 2)}
    waited = 0.0
    if not args.cold:
        waited = _settle(server, args.settle)[0]  # so cold times are the pages', not a backlog's
        row.update(_prime(f"http://{_netloc(host, port)}", paths))
    settled, row["server_idle_before"] = _settle(server, args.settle)
    row["settle_s"] = round(waited + settled, 1)
    plan = {"host": host, "port": port, "paths": paths, "rate": row["target_rps"],
            "warmup_s": args.warmup, "duration_s": args.duration, "timeout_s": args.timeout,
            "max_connections": args.connections}
    cpu_before = _cpu_s(server.pid) if server else None
    result = _run_load_gen(plan)
    cpu_after = _cpu_s(server.pid) if server else None
    row.update(result)
    row["loadavg_1m"] = round(os.getloadavg()[0], 2)  # others' work on the machine shows here
    if cpu_before is not None and cpu_after is not None and result.get("scheduled_with_warmup"):
        row["server_cpu_s"] = round(cpu_after - cpu_before, 2)
        row["server_cpu_ms_per_req"] = round(
            1000 * (cpu_after - cpu_before) / result["scheduled_with_warmup"], 2)
        row["server_rss_mb"] = _rss_mb(server.pid) if server else None
    goal = endpoint.goal_p99_ms
    if goal is not None:
        row["goal"] = f"p99 < {goal:g} ms at {endpoint.rate:g}/s, 0 errors"
        row["goal_met"] = None if row["target_rps"] < endpoint.rate else (
            row.get("p99_ms") is not None and row["p99_ms"] < goal
            and row.get("error_count", 1) == 0)  # None: run below the goal's rate
    print(json.dumps(row), flush=True)
    return row


def _prime(base: str, paths: list[str]) -> dict[str, Any]:
    """Fetch each path once, in turn, so the load meets warm caches (the goals are about a
    warm server); what the cold requests took is part of the result."""
    took: list[float] = []
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + PRIME_BUDGET_S
    for path in paths:
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        try:
            statuses[str(_get(base + path, PRIME_TIMEOUT_S)[0])] += 1
        except OSError as error:  # URLError, a reset or a timeout: reported, not fatal
            statuses[type(error).__name__] += 1
        took.append(time.perf_counter() - start)
    return {"cold_requests": len(took), "cold_mean_ms": round(1000 * sum(took) / len(took), 1),
            "cold_max_ms": round(1000 * max(took), 1), "cold_statuses": dict(statuses)}


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run_load_gen(plan: dict[str, Any]) -> dict[str, Any]:
    """Run bench/load_gen.py on ``plan``; it ends by itself, this limit is the backstop."""
    limit = plan["warmup_s"] + plan["duration_s"] + plan["timeout_s"] + 30
    try:
        done = subprocess.run([sys.executable, str(LOAD_GEN)], input=json.dumps(plan),
                              capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"load generator still running after {limit:.0f} s; killed"}
    if done.returncode != 0:
        return {"error": f"load generator failed: {done.stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _machine(args: argparse.Namespace, server: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": cpu, "loadavg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "commit": _git("rev-parse", "--short", "HEAD"),
            "dirty": bool(_git("--no-optional-locks", "status", "--porcelain",
                               "--untracked-files=no")),
            "server": f"tuner_service.cli api (pid {server.pid})" if server else args.url,
            "duration_s": args.duration, "warmup_s": args.warmup, "timeout_s": args.timeout,
            "rate_scale": args.rate_scale, "max_connections": args.connections}


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _git(*argv: str) -> str | None:
    try:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'endpoint':<31}{'target':>7}{'got/s':>8}{'ok':>7}{'errors':>8}{'p50':>8}"
            f"{'p95':>8}{'p99':>8}{'max':>8}{'KB':>8}{'srv ms':>8}  goal")
    print(head + "\n" + "-" * len(head), file=sys.stderr)
    for row in rows:
        if "error" in row:
            print(f"{row['endpoint']:<31}{row['error']}", file=sys.stderr)
            continue
        kb = row["mean_bytes"] / 1024 if row.get("mean_bytes") is not None else float("nan")
        goal = {True: "met", False: "MISSED", None: "(rate below goal's)"}.get(
            row.get("goal_met"), "") if "goal" in row else ""
        print(f"{row['endpoint']:<31}{row['target_rps']:>7g}{row['achieved_rps']:>8.1f}"
              f"{row['ok']:>7}{row['error_count']:>8}{_f(row['p50_ms'])}{_f(row['p95_ms'])}"
              f"{_f(row['p99_ms'])}{_f(row['max_ms'])}{kb:>8.1f}"
              f"{_f(row.get('server_cpu_ms_per_req'))}  {goal}", file=sys.stderr)
    print("latency in ms from the scheduled send time; timeouts count as --timeout; "
          "srv ms = server CPU per request", file=sys.stderr)


def _f(value: float | None) -> str:
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"


if __name__ == "__main__":
    main()
