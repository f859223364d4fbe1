#!/usr/bin/env bash
# Create .venv with Python >= 3.11 and install the project into it (extras as arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "tuner-service needs Python 3.11+"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
# With "dev": the tests' model plugins (tests/plugin_package), an entry-point package like those
# operators install on workers. No build isolation: TensorFlow already brought setuptools.
case ",$extras," in
    *,dev,*) .venv/bin/python -m pip install --quiet --no-build-isolation -e tests/plugin_package ;;
esac
