"""Process management for ``tuner up`` and ``tuner worker``: Celery workers as child processes.

The API process never imports the worker code: workers start as ``python -m celery`` with the
app given by name, so TensorFlow loads only in their pool children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tuner_service.config import Settings

WORKER_APP = "workers.celery_app"
WARM_SHUTDOWN_S = 10.0


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
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def start_workers(settings: Settings, count: int, gpus: list[str] | None = None,
                  loglevel: str = "WARNING") -> list[subprocess.Popen[bytes]]:
    """Start ``count`` single-process workers; with ``gpus``, worker i uses gpus[i % len]."""
    processes = []
    for index in range(count):
        gpu = gpus[index % len(gpus)] if gpus else None
        command = worker_command(settings, name=f"tuner-{index}", loglevel=loglevel)
        processes.append(subprocess.Popen(command, env=worker_env(gpu)))
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
