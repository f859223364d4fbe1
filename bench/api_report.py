"""What bench/api_load.py reports: JSON lines on stdout (the store and the machine first, then
one per endpoint) and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def json_line(record: dict[str, Any]) -> None:
    """One result as a JSON line on stdout, flushed so a reader sees it at once."""
    print(json.dumps(record), flush=True)


def machine(args: argparse.Namespace, server: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    """The machine, the checkout and the run's settings, for the first JSON line."""
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


def table(rows: list[dict[str, Any]]) -> None:
    """The endpoints' rows as a table on stderr."""
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
