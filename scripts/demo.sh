#!/usr/bin/env bash
# Quick start 1: set up, then tune Adam for logistic regression on scikit-learn's digits
# (20 trials x 10 epochs) on the embedded default and print the best-config report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tuner demo "$@"
