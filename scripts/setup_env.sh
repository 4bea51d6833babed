#!/usr/bin/env bash
# Create .venv with everything torch_ntk needs (torch included) and build the extension.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again (it reuses .venv).
#
#   TORCH_SPEC   the torch requirement (default torch==2.13.0; on this project's machines
#                a local CPU build). Any torch >= 2.4 works.
#   PYTHON       the interpreter that creates .venv (default python3).
#   FORCE_CUDA   1: build the CUDA ops too (needs a CUDA torch and toolkit); 0: CPU only.
#
# A second call skips what is up to date: the pip installs when TORCH_SPEC, the Python
# and the package lists below are unchanged (stamp .venv/deps.stamp), the build when
# csrc/, setup.py, pyproject.toml, the torch, the Python and the CUDA settings are
# unchanged and torch_ntk/_C*.so exists (stamp .venv/build.stamp; scripts/setup_stamp.py).
# pip's output goes to .venv/setup.log, the build's to .venv/build.log; a failure prints
# the log's tail and its path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PACKAGES="numpy ninja pybind11 setuptools>=64 wheel tqdm matplotlib pytest hypothesis scipy scikit-learn"
# Optional integrations, tested in CI.
INTEGRATIONS="lightning tensorboard"
# For the message only: the build's CPU seconds (4 objects, 108 s of GCC 12 at a load
# below 2, plus linking and pip) and its longest object (the analytic op, 38 s, plus pip).
BUILD_CPU_S=130
BUILD_LONGEST_S=60

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
VPY=.venv/bin/python
STAMP="$VPY scripts/setup_stamp.py"
PYVER=$("$VPY" -c 'import sys; print(sys.version.split()[0])')

# run_logged LOG CMD...: run CMD with its output appended to LOG; on failure show the tail.
run_logged() {
  local log=$1; shift
  if ! "$@" >>"$log" 2>&1; then
    echo "setup_env: failed: $*" >&2
    echo "---- last 40 lines of $log ----" >&2
    tail -n 40 "$log" >&2
    echo "---- full log: $PWD/$log ----" >&2
    exit 1
  fi
}

DEPS_ARGS=(--values "torch_spec=$TORCH_SPEC" "python=$PYVER" "packages=$PACKAGES"
           "integrations=$INTEGRATIONS" "extras=torchdiffeq"
           --require ".venv/lib/python*/site-packages/torch/__init__.py")
if reason=$($STAMP check .venv/deps.stamp "${DEPS_ARGS[@]}"); then
  echo "setup_env: packages up to date ($TORCH_SPEC, Python $PYVER); pip skipped"
else
  echo "setup_env: installing packages into .venv ($reason; log: .venv/setup.log)"
  : >.venv/setup.log
  # One resolver pass for torch, the packages and the integrations, so that pip never
  # swaps the torch that TORCH_SPEC names for one an integration would prefer.
  # shellcheck disable=SC2086  # the package lists are word lists
  run_logged .venv/setup.log "$VPY" -m pip install --disable-pip-version-check \
    "$TORCH_SPEC" $PACKAGES $INTEGRATIONS
  # torchdiffeq (the ode extra) without its dependencies, so that it never replaces the torch above.
  run_logged .venv/setup.log "$VPY" -m pip install --disable-pip-version-check --no-deps torchdiffeq
  $STAMP write .venv/deps.stamp "${DEPS_ARGS[@]}"
fi

TORCH_VERSION=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))')
BUILD_ARGS=(--files csrc setup.py pyproject.toml
            --values "torch_spec=$TORCH_SPEC" "torch=$TORCH_VERSION" "python=$PYVER"
                     "root=$PWD" "FORCE_CUDA=${FORCE_CUDA-unset}"
                     "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST-unset}"
                     "CUDA_HOME=${CUDA_HOME-unset}"
            --require "torch_ntk/_C*.so")
if reason=$($STAMP check .venv/build.stamp "${BUILD_ARGS[@]}"); then
  echo "setup_env: C++ extension up to date (csrc/, setup.py, torch $TORCH_VERSION unchanged); build skipped"
else
  cores=$(nproc 2>/dev/null || echo 1)
  jobs=${MAX_JOBS:-$cores}
  [ "$jobs" -ge 1 ] || jobs=1
  est=$(( BUILD_CPU_S / jobs ))
  [ "$est" -ge "$BUILD_LONGEST_S" ] || est=$BUILD_LONGEST_S
  echo "setup_env: building the C++ extension ($reason): about $(( (est + 59) / 60 )) minutes" \
       "on $jobs cores, longer under load (log: .venv/build.log)"
  start=$(date +%s)
  : >.venv/build.log
  # FORCE_CUDA decides whether CUDA ops are built (default: when a toolkit and a CUDA torch exist).
  run_logged .venv/build.log "$VPY" -m pip install -v --disable-pip-version-check \
    --no-build-isolation --no-deps -e .
  $STAMP write .venv/build.stamp "${BUILD_ARGS[@]}"
  echo "setup_env: built in $(( $(date +%s) - start )) s"
fi
"$VPY" -c "import torch_ntk, torch; print('torch_ntk', torch_ntk.__version__, 'on torch', torch.__version__, '(CUDA ops built)' if torch_ntk.ops.cuda_built() else '(CPU ops)')"
