"""What the service costs over hand-run Optuna: the same job both ways, side by side.

(a) plain in-process Optuna (in-memory storage) calling the same training function with the
    same search space, sampler, pruner and seed; (b) the service end to end with one worker:
    HTTP submit -> job done, workers already started (TensorFlow imported) in both cases.

    python bench/overhead.py --trials 20 --epochs 10

Prints one JSON line per run and a last line with inprocess_s, service_s and ratio
(service / in-process); a summary table goes to stderr. Compare ratios, not absolute times.
The service's requests send the admin token ``tuner up`` writes to $TUNER_HOME/token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner_service.cli import EXAMPLE_SPEC  # noqa: E402
from tuner_service.schemas import JobCreate  # noqa: E402


def job_spec(trials: int, epochs: int, seed: int) -> dict[str, Any]:
    """The built-in digits example with the benchmark's budget."""
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    spec["budget"].update(n_trials=trials, epochs=epochs)
    spec["seed"] = seed
    # Trial for trial against study.optimize: no confirmation runs, no trials of earlier runs.
    spec.update(confirm=False, warm_start="off")
    return dict(spec)


def run_inprocess(raw: dict[str, Any]) -> dict[str, Any]:
    """Hand-run Optuna: study.optimize over the worker's own training function."""
    import optuna

    from tuner_service.adam import PAPER_DEFAULTS
    from tuner_service.search_space import baseline_params, suggest_config
    from tuner_service.studies import make_pruner, make_sampler
    from workers.training import TrainSpec, train

    spec = JobCreate.model_validate(raw)
    from tuner_service.datasets.catalog import BUILTINS

    train_spec = TrainSpec.from_job(spec, BUILTINS[spec.dataset.match[1]])
    # Warm up as the service's worker does: data loaded, first model built, outside the clock.
    train(dataclasses.replace(train_spec, epochs=1), [PAPER_DEFAULTS], [lambda e, v: None])
    start = time.perf_counter()
    study = optuna.create_study(direction=spec.objective.direction,
                                sampler=make_sampler(spec, spec.seed), pruner=make_pruner(spec))
    baseline = baseline_params(spec.search_space)
    if baseline is not None:
        study.enqueue_trial(baseline)

    def objective(trial: optuna.Trial) -> float:
        def hook(epoch: int, value: float) -> str | None:
            trial.report(value, epoch)
            return "pruned" if trial.should_prune() else None

        (result,) = train(train_spec, [suggest_config(trial, spec.search_space)], [hook])
        if result.state == "pruned":
            raise optuna.TrialPruned()
        if result.state == "fail":
            raise RuntimeError(result.reason)
        assert result.value is not None
        return result.value

    study.optimize(objective, n_trials=spec.budget.n_trials, catch=(RuntimeError,))
    elapsed = time.perf_counter() - start
    values = [t.value for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    return {"run": "inprocess", "seconds": elapsed, "best": min(values) if values else None,
            "trials": len(study.trials)}


def run_service(raw: dict[str, Any], workers: int) -> dict[str, Any]:
    """The service end to end on the embedded default: submit over HTTP, poll until done."""
    home = Path(tempfile.mkdtemp(prefix="tuner-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env["TUNER_HOME"] = str(home)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port", str(port),
                           "--workers", str(workers)], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            _wait_ready(client, home)
            start = time.perf_counter()
            job = client.post("/v1/jobs", json=raw).json()
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                # Poll like a user would (the CLI polls every second): each poll costs the API
                # a study read, and on two cores that competes with training.
                time.sleep(float(os.environ.get("BENCH_POLL_S", "0.25")))
                job = client.get(f"/v1/jobs/{job['id']}").json()
            elapsed = time.perf_counter() - start
            trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
    durations = [t["duration_s"] for t in trials if t["duration_s"] is not None]
    return {"run": "service", "seconds": elapsed, "status": job["status"],
            "best": job["best"]["value"] if job["best"] else None, "trials": len(trials),
            "sum_trial_seconds": sum(durations)}


def _wait_ready(client: httpx.Client, home: Path) -> str:
    """The API answers and the worker child has imported TensorFlow (warm, like in-process).

    Reads the admin token ``tuner up`` writes to ``home/token`` and sets ``client`` to send it
    with every request (``Authorization: Bearer``); returns the secret."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    secret = read_token(home, deadline)
    client.headers["Authorization"] = f"Bearer {secret}"
    # A warm-up job of one 1-epoch trial pays for TF import, data loading and tracing.
    warm = dict(job_spec(1, 1, 0), name="warm-up")
    answer = client.post("/v1/jobs", json=warm)
    if answer.status_code != 201:
        raise SystemExit(f"the service refused the warm-up job ({answer.status_code}): "
                         f"{answer.text[:500]}")
    job = answer.json()
    while client.get(f"/v1/jobs/{job['id']}").json()["status"] not in ("succeeded", "failed"):
        time.sleep(0.1)
    return secret


def read_token(home: Path, deadline: float) -> str:
    """The secret in ``home/token`` (``tuner up`` writes it before it answers /healthz),
    waiting for the file until ``deadline`` (a ``time.monotonic()`` time)."""
    path = home / "token"
    while True:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            secret = ""
        if secret:
            return secret
        if time.monotonic() >= deadline:
            raise SystemExit(f"no API token: `tuner up` wrote no {path}")
        time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternate runs this many times")
    args = parser.parse_args()
    raw = job_spec(args.trials, args.epochs, args.seed)
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        for run in (run_inprocess(raw), run_service(raw, workers=1)):
            runs.append(run)
            print(json.dumps(run), flush=True)
    inprocess = min(r["seconds"] for r in runs if r["run"] == "inprocess")
    service = min(r["seconds"] for r in runs if r["run"] == "service")
    summary = {"trials": args.trials, "epochs": args.epochs, "inprocess_s": round(inprocess, 3),
               "service_s": round(service, 3), "ratio": round(service / inprocess, 4),
               "overhead_per_trial_s": round((service - inprocess) / args.trials, 4)}
    print(json.dumps(summary), flush=True)
    print(f"in-process {inprocess:.1f} s | service {service:.1f} s | ratio "
          f"{summary['ratio']:.3f} | overhead/trial {summary['overhead_per_trial_s']:.3f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
