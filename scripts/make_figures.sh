#!/usr/bin/env bash
# Regenerate the README's figures and the numbers behind them (docs/figures/*.png, *.json):
# the demo, the three paper figures, cntk-digits and classification at their --quick
# settings (a few minutes on a CPU).
# Uses $PYTHON when set, else sets up .venv like scripts/demo.sh. Extra arguments go to
# both commands, e.g. `bash scripts/make_figures.sh --threads 2 --no-progress`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  bash scripts/setup_env.sh
  PYTHON=.venv/bin/python
fi
"$PYTHON" -m torch_ntk demo --out docs/figures "$@"
"$PYTHON" -m torch_ntk reproduce all --quick --out docs/figures "$@"
"$PYTHON" -m torch_ntk reproduce cntk-digits --quick --out docs/figures "$@"
"$PYTHON" -m torch_ntk reproduce classification --quick --out docs/figures "$@"
