"""The child process of ``workers.model_files.inspect_in_child``: inspect one uploaded model
file and print exactly one JSON line on stdout, ``{"inspection": {...}}`` or
``{"rejected": "reason"}``, then exit (the process and whatever loading left behind end)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers.inspect_model",
                                     description=__doc__)
    parser.add_argument("path", type=Path, help="the uploaded .keras file")
    parser.add_argument("--max-params", type=int, required=True,
                        help="refuse models with more parameters than this")
    parser.add_argument("--max-inflated-bytes", type=int, default=8 << 30,
                        help="refuse archives that inflate to more than this")
    parser.add_argument("--max-memory-bytes", type=int, default=0,
                        help="address-space limit of this process (0: none)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.max_memory_bytes > 0:
        # Set before TensorFlow loads: a config that declares a huge layer then fails to
        # allocate its weights (and is rejected) instead of swapping the worker's host.
        limit = args.max_memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Until the result is written, fd 1 points at stderr: whatever TensorFlow or Keras print
    # (from Python or C++) cannot mix with the one line the parent parses.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        result = _inspect(args)
    finally:
        sys.stdout.flush()
        os.dup2(result_fd, 1)
        os.close(result_fd)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: TensorFlow loads only once stdout is diverted.
    from workers.model_files import ModelRejected, inspect

    try:
        found = inspect(args.path, max_params=args.max_params,
                        max_inflated_bytes=args.max_inflated_bytes)
    except ModelRejected as rejected:
        return {"rejected": str(rejected)}
    return {"inspection": found.model_dump(mode="json")}


if __name__ == "__main__":
    main()
