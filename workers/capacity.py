"""How much memory this worker can still give a pack: GPU memory on a GPU, RAM otherwise.

Read without TensorFlow (which reports only what it has allocated itself): ``nvidia-smi`` for
the GPU this process sees, ``/proc/meminfo`` for RAM.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# When nothing can be read (another OS, no /proc): a modest machine's worth.
FALLBACK_BYTES = 2 * 2**30


def free_memory_bytes() -> int:
    """Free memory of this worker's GPU (its first visible one), else available RAM."""
    gpu = _free_gpu_bytes()
    return gpu if gpu is not None else _available_ram_bytes()


def _free_gpu_bytes() -> int | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible in ("", "-1") or shutil.which("nvidia-smi") is None:
        return None
    index = (visible or "0").split(",")[0]
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=memory.free",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout
        return int(out.split()[0]) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _available_ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return FALLBACK_BYTES
