"""Process management for ``tuner up`` and ``tuner worker``: Celery workers as child processes.

The API process never imports the worker code: workers start as ``python -m celery`` with the
app given by name, so TensorFlow loads only in their pool children.

``tuner up`` sends its workers' output (Celery, TensorFlow's C++ runtime, warnings) to
``$TUNER_HOME/workers.log`` so the terminal shows the user's own output; an operator's
``tuner worker`` keeps its terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO

from tuner_service.config import Settings

WORKER_APP = "workers.celery_app"
WARM_SHUTDOWN_S = 10.0
WORKER_LOG = "workers.log"
# Checked when ``tuner up`` starts: the log is appended to, run after run, until it passes this
# size; then the old one moves to ``workers.log.1`` (replacing the one before).
WORKER_LOG_MAX_BYTES = 10 * 2**20


def worker_command(settings: Settings, *, concurrency: int = 1, name: str = "tuner",
                   loglevel: str = "INFO") -> list[str]:
    """The command line of one Celery worker (prefork pool: TF loads after the fork)."""
    command = [
        sys.executable, "-m", "celery", "--quiet", "-A", WORKER_APP, "worker",
        "--pool", "prefork", "--concurrency", str(concurrency),
        "--queues", settings.queue_name, "--hostname", f"{name}@%h", "--loglevel", loglevel,
    ]
    if settings.uses_embedded_broker:
        # The folder broker has no broadcast channel for these.
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return command


def worker_env(gpu: str | None) -> dict[str, str]:
    """Environment of a worker; ``gpu`` pins it to one GPU (one worker process per GPU)."""
    env = dict(os.environ)
    # 2 drops TensorFlow's C++ INFO and WARNING start-up lines (oneDNN, CPU features) but keeps
    # its errors. A few lines absl writes before it is initialised ignore this; they go
    # wherever the worker's stderr goes (the log file under ``tuner up``). An operator's own
    # value wins.
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def worker_log_path(settings: Settings) -> Path:
    """Where ``tuner up`` writes its workers' output."""
    return (settings.home / WORKER_LOG).resolve()


def open_worker_log(path: Path) -> IO[bytes]:
    """The workers' log, opened for appending after a line that marks this run's start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > WORKER_LOG_MAX_BYTES:
        path.replace(path.with_name(f"{path.name}.1"))
    log = path.open("ab")
    log.write(f"--- tuner up, {datetime.now().isoformat(timespec='seconds')} ---\n".encode())
    log.flush()  # before the workers append to the same file
    return log


def start_workers(settings: Settings, count: int, gpus: list[str] | None = None, *,
                  output: IO[bytes] | None = None, loglevel: str = "INFO"
                  ) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` single-process workers; with ``gpus``, worker i uses gpus[i % len].

    Their stdout and stderr go to ``output`` (a file, see ``open_worker_log``) when given, else
    to ours.
    """
    processes = []
    stderr = subprocess.STDOUT if output is not None else None
    for index in range(count):
        gpu = gpus[index % len(gpus)] if gpus else None
        command = worker_command(settings, name=f"tuner-{index}", loglevel=loglevel)
        processes.append(subprocess.Popen(command, env=worker_env(gpu), stdout=output,
                                          stderr=stderr))
    return processes


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    """Warm shutdown (finish the running epoch's trial), then cold, then kill."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WARM_SHUTDOWN_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # Cold shutdown: the interrupted trial is recovered by the lost-work loop.
            process.send_signal(signal.SIGQUIT)
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
