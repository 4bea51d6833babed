#!/usr/bin/env bash
# Create .venv with everything torch_ntk needs (torch included) and build the extension.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again (it reuses .venv).
#
#   TORCH_SPEC   the torch requirement (default torch==2.13.0; on this project's machines
#                a local CPU build). Any torch >= 2.4 works.
#   PYTHON       the interpreter that creates .venv (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" numpy ninja pybind11 \
  "setuptools>=64" wheel tqdm matplotlib pytest hypothesis scipy scikit-learn
# Optional integrations, tested in CI. Pinned to the same torch in the same command, so
# that pip never swaps the torch installed above.
"$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" lightning tensorboard
# FORCE_CUDA decides whether CUDA ops are built (default: when a toolkit and a CUDA torch exist).
"$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
# torchdiffeq (the ode extra) without its dependencies, so that it never replaces the torch above.
"$VPY" -m pip install -q --disable-pip-version-check --no-deps torchdiffeq
"$VPY" -c "import torch_ntk, torch; print('torch_ntk', torch_ntk.__version__, 'on torch', torch.__version__, '(CUDA ops built)' if torch_ntk.ops.cuda_built() else '(CPU ops)')"
