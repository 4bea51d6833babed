#!/usr/bin/env bash
# The main job on a fresh machine: sets up .venv (torch included), builds, runs the demo
# (`torch-ntk demo`: about a minute on a laptop CPU; figures and numbers in torch_ntk_demo/).
# Extra arguments go to `torch-ntk demo`, e.g. `bash scripts/demo.sh --quick --out /tmp/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m torch_ntk demo "$@"
