"""``python -m tuner_service.cli``: the ``tuner`` command (tests and benchmarks start it so)."""

from __future__ import annotations

from tuner_service.cli import main

if __name__ == "__main__":
    main()
