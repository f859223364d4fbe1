"""What the service finds at an equal budget of trial-epochs, against the tools a user would use.

    python bench/quality.py --out docs      # every task, every method, seeds 0 1 2

Methods: ``defaults`` (Adam's paper defaults, one trial), ``kt_random``, ``kt_bayes``,
``kt_hyperband`` (KerasTuner), ``optuna_tpe`` (a hand-written Optuna script), ``service`` (the
service end to end with one worker, its default sampler, pruner and search space), and
``service_inproc`` (the service's search logic in this process, with knobs the spec lacks).

Budget B = n_trials x epochs trial-epochs. Each method runs until it has spent >= B (a pruned
trial costs the epochs it ran); its trials are then replayed in the order they finished and a
trial counts only if it ended within B. A trial's value is its val_loss at the last epoch, and
only trials that trained every epoch have one. That is the search-time view.

The re-scored view (``bench/rescore.py``): every task's data set keeps a holdout no method
searches on. Each run names its recommendation (a peer: its best full trial within B;
``defaults``: the paper defaults; the service: its report's ``recommended`` configuration, or
its best trial where the report has none), which is re-trained with seeds no method saw and
scored by its cross-entropy on the holdout. The service's budget includes its confirmation.

Prints one JSON line per (task, method, seed), then one summary line per task; a table goes to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import _free_port, _wait_ready  # noqa: E402
from bench.peers import (  # noqa: E402
    PEER_METHODS,
    PEERS,
    Task,
    TrialLog,
    counted,
    epochs_spent,
    import_keras,
    merge,
    sig6,
)
from bench.quality_report import text_table, write_docs  # noqa: E402
from bench.quality_summary import summarize  # noqa: E402
from bench.rescore import (  # noqa: E402
    Recommendation,
    best_trial,
    from_report,
    paper_defaults,
    rescored_fields,
)

TASKS = {task.name: task for task in [
    Task("digits_logreg", {"builtin": "logistic_regression"}, epochs=10, n_trials=20,
         note="logistic regression, 10 epochs, batch 32, B = 20 x 10"),
    Task("digits_mlp", {"builtin": "mlp", "hidden_units": [256, 256], "dropout": 0.2},
         epochs=10, n_trials=20, note="MLP 256-256 ReLU, dropout 0.2, 10 epochs, batch 32, "
         "B = 20 x 10 (about 4 s per trial here)"),
    # Generalization: not used to choose defaults; other shapes, batch sizes and budgets.
    Task("gen_mlp_wide_b64", {"builtin": "mlp", "hidden_units": [512], "dropout": 0.5},
         epochs=10, n_trials=10, batch_size=64,
         note="generalization: MLP 512 dropout 0.5, batch 64, small budget B = 10 x 10"),
    Task("gen_cnn", {"builtin": "cnn", "filters": [16, 32], "kernel_size": 3, "pool_size": 2,
                     "dense_units": 64, "dropout": 0.3},
         epochs=5, n_trials=20, note="generalization: CNN c16-c32-d64, 5 epochs, B = 20 x 5"),
    Task("gen_logreg_40x5", {"builtin": "logistic_regression"}, epochs=5, n_trials=40,
         note="generalization: logistic regression, short trials, B = 40 x 5"),
    Task("smoke", {"builtin": "logistic_regression"}, epochs=3, n_trials=4,
         note="a quick check that every method runs (not in the default tasks)"),
]}
DEFAULT_METHODS = ("defaults", *PEER_METHODS, "service")
TERMINAL = ("succeeded", "failed", "cancelled")
POLL_S = 1.0


# ---------------------------------------------------------------------------------- service
@contextlib.contextmanager
def service_stack() -> Iterator[httpx.Client]:
    """The embedded service (``tuner up``, one worker) in a fresh TUNER_HOME, warmed up; the
    client sends the admin token ``tuner up`` wrote there (``_wait_ready`` reads it)."""
    home = Path(tempfile.mkdtemp(prefix="tuner-quality-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env["TUNER_HOME"] = str(home)
    port = _free_port()
    up = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port", str(port),
                           "--workers", "1"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_ready(client, home)
            yield client
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def run_service(client: httpx.Client, task: Task, seed: int,
                overrides: dict[str, Any]) -> tuple[list[TrialLog], dict[str, Any]]:
    """Submit the minimal job over HTTP with the budget in trial-epochs, wait for its end;
    its trials and its report.

    ``budget.max_trial_epochs`` = B: pruned trials hand their unused epochs to more trials and
    the service stops starting trials once B is spent, its confirmation included; n_trials = B
    only caps the count (every trial costs at least one epoch). Overrides may change either.
    """
    budget = {"n_trials": task.budget, "max_trial_epochs": task.budget}
    # No warm start: each seed's job must learn alone, as each peer run does (the jobs of one
    # task share the model and data, so ``auto`` would hand later seeds the earlier trials).
    raw = merge(merge(task.job_spec(seed), {"budget": budget, "warm_start": "off"}), overrides)
    answer = client.post("/v1/jobs", json=raw)
    if answer.status_code != 201:
        raise SystemExit(f"the service refused the job: {answer.text}")
    job_id = answer.json()["id"]
    while client.get(f"/v1/jobs/{job_id}").json()["status"] not in TERMINAL:
        time.sleep(POLL_S)
    trials = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    ended = sorted((t for t in trials if t["finished_at"]), key=lambda t: t["finished_at"])
    logs = [TrialLog(_cost(t), tuple(t["intermediate_values"]), t["state"] == "complete",
                     t["params"]) for t in ended]
    return logs, client.get(f"/v1/jobs/{job_id}/report").json()


def _cost(trial: dict[str, Any]) -> int:
    return epochs_spent(len(trial["intermediate_values"]), trial["state"], trial["fail_reason"])


# ------------------------------------------------------------------------------- scoring
def best_so_far(logs: list[TrialLog], budget: int) -> list[tuple[int, float]]:
    """(trial-epochs, best value) each time the best improves, counting trials ended by B."""
    points: list[tuple[int, float]] = []
    spent = 0
    for log in counted(logs, budget):
        spent += log.epochs
        if log.value is not None and (not points or log.value < points[-1][1]):
            points.append((spent, log.value))
    return points


def run_line(task: Task, method: str, seed: int, logs: list[TrialLog],
             seconds: float) -> dict[str, Any]:
    """The JSON record of one run: best at B, budget use, curve and every trial (the
    re-scored fields come from ``rescored_fields``)."""
    curve = best_so_far(logs, task.budget)
    ends = [sum(log.epochs for log in logs[: i + 1]) for i in range(len(logs))]
    return {
        "task": task.name, "method": method, "seed": seed, "budget": task.budget,
        # Rounded as the curve is, so that a method's curve reaches its own best.
        "best": sig6(curve[-1][1]) if curve else None,
        "spent": ends[-1] if ends else 0,
        "used": max([end for end in ends if end <= task.budget], default=0),
        "n_trials": len(logs), "n_full": sum(log.full for log in logs),
        "seconds": round(seconds, 1),
        "curve": [[epochs, sig6(best)] for epochs, best in curve],
        "trials": [{"epochs": log.epochs, "full": log.full,
                    "values": [sig6(v) for v in log.values],
                    "params": {k: sig6(v) for k, v in (log.params or {}).items()} or None}
                   for log in logs],
    }


# ---------------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS),
                        default=[name for name in TASKS if name != "smoke"])
    parser.add_argument("--methods", nargs="*", choices=[*PEERS, "service"],
                        default=list(DEFAULT_METHODS),
                        help="none: only summarize the --reuse lines")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--service-spec-overrides", type=json.loads, default={},
                        metavar="JSON", help="merged into the service's job spec "
                        "(also into service_inproc's)")
    parser.add_argument("--inproc-options", type=json.loads, default={}, metavar="JSON",
                        help='service_inproc only: {"sampler": {"name": "tpe", ...}, '
                        '"pruner": {"name": "median", ...}, "patience": N}')
    parser.add_argument("--label", default="", help="name of the service variant: methods "
                        "service and service_inproc become service:LABEL, service_inproc:LABEL")
    parser.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="JSONL",
                        help="run lines of earlier invocations to summarize with this one's")
    parser.add_argument("--out", type=Path, help="write DIR/benchmarks.md and DIR/img/*.png")
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every (task, method, seed) asked for, printing each JSON line as it ends."""
    if not args.methods:
        return []
    import_keras()
    lines: list[dict[str, Any]] = []
    needs_service = "service" in args.methods
    with service_stack() if needs_service else contextlib.nullcontext() as client:
        for task in (TASKS[name] for name in args.tasks):
            for seed in args.seeds:
                for method in args.methods:
                    start = time.perf_counter()
                    logs, recommendation, extra = _run_method(method, task, seed, args,
                                                              client)
                    name = f"{method}:{args.label}" if args.label and \
                        method.startswith("service") else method
                    line = run_line(task, name, seed, logs, time.perf_counter() - start)
                    line.update(extra, **rescored_fields(task, seed, recommendation))
                    lines.append(line)
                    print(json.dumps(line), flush=True)
    return lines


def _run_method(method: str, task: Task, seed: int, args: argparse.Namespace,
                client: httpx.Client | None
                ) -> tuple[list[TrialLog], Recommendation | None, dict[str, Any]]:
    """The method's trials, the configuration it recommends, and (the service only) what its
    report says of its compute and confirmation, which its trial list does not show."""
    if method == "service":
        assert client is not None
        logs, report = run_service(client, task, seed, args.service_spec_overrides)
        extra = {"report_trial_epochs": report["compute"]["trial_epochs"],
                 "confirmation_state": (report.get("confirmation") or {}).get("state")}
        return logs, from_report(report), extra
    options = dict(args.inproc_options, spec=args.service_spec_overrides)
    logs = PEERS[method](task, seed, options)
    recommendation = paper_defaults() if method == "defaults" else best_trial(logs, task.budget)
    return logs, recommendation, {}


def load_lines(paths: list[Path]) -> list[dict[str, Any]]:
    """Run lines (not summaries) from earlier outputs."""
    lines = []
    for path in paths:
        for text in path.read_text().splitlines():
            if text.startswith("{") and '"curve"' in text:
                lines.append(json.loads(text))
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run, summarize, print, and optionally write the docs."""
    args = parse_args(argv)
    fresh = run_all(args)
    done = {(r["task"], r["method"], r["seed"]) for r in fresh}
    lines = [r for r in load_lines(args.reuse)
             if (r["task"], r["method"], r["seed"]) not in done] + fresh
    tasks = [t for t in TASKS.values() if any(r["task"] == t.name for r in lines)]
    summaries = [summarize(t, [r for r in lines if r["task"] == t.name]) for t in tasks]
    for summary in summaries:
        print(json.dumps(summary), flush=True)
    print(text_table(summaries, lines), file=sys.stderr)
    if args.out is not None:
        write_docs(args.out, tasks, summaries, lines)


if __name__ == "__main__":
    main()
