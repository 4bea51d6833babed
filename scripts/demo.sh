#!/usr/bin/env bash
# The main job on a fresh machine: sets up .venv (torch included), builds, runs the demo.
# Extra arguments go to `python -m torch_ntk`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m torch_ntk "$@"
