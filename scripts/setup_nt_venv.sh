#!/usr/bin/env bash
# Create the venv of the neural-tangents baseline (benchmarks/neural_tangents.py): JAX,
# neural-tangents and torch side by side, so both run in one process. Not used by CI or
# by the test suite; safe to run again (a venv that already imports the pinned versions
# is left as it is).
#
#   NT_VENV      where (default /work/nt-venv)
#   PYTHON       the interpreter that creates it (default python3); its minor version must
#                be the one that built torch_ntk/_C*.so (scripts/setup_env.sh), which the
#                benchmark imports from this checkout through PYTHONPATH
#   TORCH_SPEC   the torch requirement (default torch==2.13.0, the torch the extension is
#                built against; on this project's machines a local CPU build)
#
# Why these pins: neural-tangents 0.6.5 (January 2024, its last release) does not import
# on a current JAX; jax/jaxlib 0.4.23 (its release month) work, and need numpy < 2.
# neural-tangents imports tensorflow and tf2jax at import time (its experimental TF
# interface), so both are installed; the versions pip resolved (and that were checked to
# work with jax 0.4.23) are pinned.
#
# Then:  PYTHONPATH=. "$NT_VENV/bin/python" benchmarks/neural_tangents.py [--quick]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NT_VENV=${NT_VENV:-/work/nt-venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PINS=(
  "jax[cpu]==0.4.23" "jaxlib==0.4.23" "neural-tangents==0.6.5"
  "numpy==1.26.4" "scipy==1.17.1" "ml_dtypes==0.5.4"
  "tensorflow==2.21.0" "tf2jax==0.3.6" "frozendict==2.5.1"
  "$TORCH_SPEC" tqdm
)
CHECK='
import importlib.metadata as m, sys
want = dict(a.split("==") for a in sys.argv[1:])
got = {k: m.version(k) for k in want}
bad = {k: (got[k], v) for k, v in want.items() if not got[k].startswith(v)}
if bad:
    raise SystemExit(f"versions differ (installed, wanted): {bad}")
import jax, neural_tangents, torch  # noqa: E401
print(f"jax {jax.__version__}, neural-tangents {neural_tangents.__version__}, torch {torch.__version__}")
'
VERSIONS=(jax==0.4.23 jaxlib==0.4.23 neural-tangents==0.6.5 numpy==1.26.4
          "torch==${TORCH_SPEC#torch==}")

if [ ! -x "$NT_VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$NT_VENV"
fi
VPY=$NT_VENV/bin/python
if found=$(TF_CPP_MIN_LOG_LEVEL=3 "$VPY" -c "$CHECK" "${VERSIONS[@]}" 2>/dev/null); then
  echo "setup_nt_venv: $NT_VENV is up to date; pip skipped"
else
  LOG=$NT_VENV/setup.log
  echo "setup_nt_venv: installing into $NT_VENV (log: $LOG; about 2 minutes)"
  if ! "$VPY" -m pip install --disable-pip-version-check "${PINS[@]}" >"$LOG" 2>&1; then
    echo "setup_nt_venv: pip failed; the last 30 lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  if ! found=$(TF_CPP_MIN_LOG_LEVEL=3 "$VPY" -c "$CHECK" "${VERSIONS[@]}" 2>"$LOG.check"); then
    echo "setup_nt_venv: installed, but the import check failed; the last 10 lines of" \
         "$LOG.check:" >&2
    tail -n 10 "$LOG.check" >&2
    exit 1
  fi
fi
echo "setup_nt_venv: $found"

# this checkout's torch_ntk, as the benchmark imports it
if ! PYTHONPATH=$PWD "$VPY" -c "import torch_ntk" >/dev/null 2>&1; then
  echo "setup_nt_venv: torch_ntk from $PWD does not import in $NT_VENV: build its extension" \
       "first (bash scripts/setup_env.sh) with a Python of the same minor version" \
       "($("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'))" >&2
  exit 1
fi
echo "setup_nt_venv: ready: PYTHONPATH=. $VPY benchmarks/neural_tangents.py [--quick]"
