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
lower rate). Every request sends an admin token made in the store for this run; a server
already up (--url) gets TUNER_TOKEN, else $TUNER_HOME/token (``tuner up`` writes it; --home
names that folder), else a new token in the --home store. Prints a JSON line about the store
and the machine, then one per endpoint; a table goes to stderr. Between endpoints it waits
until the server's CPU is idle again, so requests abandoned at the timeout do not bill the next
endpoint.

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
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_report import json_line, machine, table  # noqa: E402
from bench.api_server import (  # noqa: E402
    cpu_s,
    free_port,
    http_get,
    loopback,
    netloc,
    rss_mb,
    settle,
    start_server,
    stop_server,
)
from bench.api_store import (  # noqa: E402
    JobRow,
    bench_token,
    job_rows,
    own_store,
    served_store,
)
from tuner_service.config import Settings  # noqa: E402
from tuner_service.db.migrate import upgrade  # noqa: E402

LOAD_GEN = ROOT / "bench" / "load_gen.py"
PRIME_TIMEOUT_S = 180.0  # a cold report of a 200-trial job may take seconds; priming waits
PRIME_BUDGET_S = 600.0  # priming stops after this long (cold_requests says how far it got)


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
            host, port = loopback(args.url)
            token = _outside_token(home, args.database_url)
            store, rows = _outside_store(args.url, home, args.database_url, token)
        else:
            assert home is not None
            settings = Settings(home=home, database_url=args.database_url)
            upgrade(settings)  # the api command does not migrate; a reused store may be older
            store = own_store(settings, args.jobs, args.seed, args.database_url)
            rows = job_rows(settings)
            token = bench_token(settings)  # a fresh one each run, a reused store too
            host, port = "127.0.0.1", free_port()
            server = start_server(home, args.database_url, port)
        json_line({"bench": "api_load", **store, **machine(args, server)})
        targets = _targets(rows, args)
        rows_out = [_measure(name, targets, args, host, port, server, token=token)
                    for name in args.endpoints]
        table(rows_out)
    finally:
        if server is not None:
            stop_server(server)
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
        loopback(args.url)
    return args


def _outside_token(home: Path | None, database_url: str | None) -> str:
    """The token for a server already up: TUNER_TOKEN, else the file ``tuner up`` writes in
    the home folder (--home, else TUNER_HOME), else a new one in the --home store."""
    settings = (Settings(home=home, database_url=database_url) if home is not None
                else Settings(database_url=database_url))
    token = settings.client_token()
    if token:
        return token
    if home is not None:
        return bench_token(settings)
    raise SystemExit("no API token for --url: set TUNER_TOKEN, or give --home (the server's "
                     "TUNER_HOME: its token file is read, else a token is made in its store)")


def _outside_store(url: str, home: Path | None, database_url: str | None, token: str
                   ) -> tuple[dict[str, Any], list[JobRow]]:
    """What a running server serves: read from its store when given (fast, not migrated),
    else listed through the API (slow on a server whose list replays studies)."""
    if home is not None:
        return served_store(home, database_url)
    listed = _api_jobs(url, token)
    states: Counter[str] = Counter()
    for job in listed:
        states.update({k: v for k, v in job["trial_counts"].items() if v})
    store = {"jobs": len(listed), "trials": sum(states.values()),
             "trials_by_state": dict(states), "build_s": None, "reused": True, "home": None}
    return store, [(job["id"], job["status"], job["trials_ended"]) for job in listed]


def _targets(rows: list[JobRow], args: argparse.Namespace) -> dict[str, list[str]]:
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


def _api_jobs(url: str, token: str) -> list[dict[str, Any]]:
    """Every job the server lists, page by page (slowly, on an unfixed server)."""
    jobs: list[dict[str, Any]] = []
    while True:
        status, body = http_get(f"{url.rstrip('/')}/v1/jobs?limit=200&offset={len(jobs)}",
                                PRIME_TIMEOUT_S, token=token)
        if status != 200:
            raise SystemExit(f"listing the jobs at {url} answered {status}: {body[:500]!r}")
        page = json.loads(body)
        jobs.extend(page["items"])
        if not page["items"] or len(jobs) >= page["total"]:
            return jobs


def _measure(name: str, targets: dict[str, list[str]], args: argparse.Namespace, host: str,
             port: int, server: subprocess.Popen[bytes] | None, *, token: str
             ) -> dict[str, Any]:
    """Prime the paths, let the server settle, run the load (every request with ``token``),
    print the endpoint's line."""
    endpoint, paths = ENDPOINTS[name], targets[name]
    row: dict[str, Any] = {"endpoint": endpoint.label, "name": name,
                           "target_rps": round(endpoint.rate * args.rate_scale, 2)}
    waited = 0.0
    if not args.cold:
        waited = settle(server, args.settle)[0]  # so cold times are the pages', not a backlog's
        row.update(_prime(f"http://{netloc(host, port)}", paths, token))
    settled, row["server_idle_before"] = settle(server, args.settle)
    row["settle_s"] = round(waited + settled, 1)
    plan = {"host": host, "port": port, "paths": paths, "rate": row["target_rps"],
            "warmup_s": args.warmup, "duration_s": args.duration, "timeout_s": args.timeout,
            "max_connections": args.connections, "token": token}
    cpu_before = cpu_s(server.pid) if server else None
    result = _run_load_gen(plan)
    cpu_after = cpu_s(server.pid) if server else None
    row.update(result)
    row["loadavg_1m"] = round(os.getloadavg()[0], 2)  # others' work on the machine shows here
    if cpu_before is not None and cpu_after is not None and result.get("scheduled_with_warmup"):
        row["server_cpu_s"] = round(cpu_after - cpu_before, 2)
        row["server_cpu_ms_per_req"] = round(
            1000 * (cpu_after - cpu_before) / result["scheduled_with_warmup"], 2)
        row["server_rss_mb"] = rss_mb(server.pid) if server else None
    goal = endpoint.goal_p99_ms
    if goal is not None:
        row["goal"] = f"p99 < {goal:g} ms at {endpoint.rate:g}/s, 0 errors"
        row["goal_met"] = None if row["target_rps"] < endpoint.rate else (
            row.get("p99_ms") is not None and row["p99_ms"] < goal
            and row.get("error_count", 1) == 0)  # None: run below the goal's rate
    json_line(row)
    return row


def _prime(base: str, paths: list[str], token: str) -> dict[str, Any]:
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
            statuses[str(http_get(base + path, PRIME_TIMEOUT_S, token=token)[0])] += 1
        except OSError as error:  # URLError, a reset or a timeout: reported, not fatal
            statuses[type(error).__name__] += 1
        took.append(time.perf_counter() - start)
    return {"cold_requests": len(took), "cold_mean_ms": round(1000 * sum(took) / len(took), 1),
            "cold_max_ms": round(1000 * max(took), 1), "cold_statuses": dict(statuses)}


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


if __name__ == "__main__":
    main()
