#!/usr/bin/env bash
# Quick start 2: set up (Redis, PostgreSQL and Chromium from Debian packages, dev tools), lint, type-check,
# check import layers, and run the whole test suite against real servers and real workers.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v redis-server >/dev/null || need_packages+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_packages+=(postgresql)
command -v pgrep >/dev/null || need_packages+=(procps)
# The report page's browser test drives Debian's chromium through Playwright (no download).
[ -x /usr/bin/chromium ] || need_packages+=(chromium)
if [ ${#need_packages[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    "${need_packages[@]}"
fi

bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
TUNER_TEST_REQUIRE_SERVERS=1 exec .venv/bin/python -m pytest "$@"
