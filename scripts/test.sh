#!/usr/bin/env bash
# The test suite on a fresh machine: sets up .venv (torch included), builds, runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k analytic -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q tests "$@"
