#!/usr/bin/env bash
# Compile and link the CUDA sources against a CUDA build of torch (no GPU needed),
# so CUDA code never silently stops compiling. Used by .ci/run.
#
#   bash scripts/check_cuda_build.sh            # makes/uses .venv-cuda (torch 2.14.1+cu130)
#   PYTHON=/path/to/python bash scripts/check_cuda_build.sh   # an existing CUDA torch
#
# The build goes to a temporary folder: the CPU build in torch_ntk/ is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CUDA_HOME:-}" ]; then
  # nvcc on PATH may be a wrapper script; the toolkit root is where the real one lives.
  if [ -d /usr/local/cuda ]; then CUDA_HOME=$(readlink -f /usr/local/cuda)
  elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  else echo "check_cuda_build: no CUDA toolkit found (set CUDA_HOME)" >&2; exit 1; fi
fi
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ ! -x .venv-cuda/bin/python ]; then
    python3 -m venv .venv-cuda
  fi
  PY=.venv-cuda/bin/python
  "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null \
    || "$PY" -m pip install -q "torch==2.14.1" numpy ninja pybind11 setuptools wheel
fi
"$PY" -c "import torch; assert torch.version.cuda, 'a CUDA build of torch is needed'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" setup.py -q build_ext --build-lib "$work/lib" --build-temp "$work/tmp"
so=$(find "$work/lib" -name '_C*.so' | head -n 1)
test -n "$so" || { echo "check_cuda_build: no extension was produced" >&2; exit 1; }
# Every CUDA source must have been compiled into the library.
for cu in csrc/cuda/*.cu; do
  [ -e "$cu" ] || continue
  obj="$work/tmp/$(dirname "$cu")/$(basename "$cu" .cu).o"
  test -s "$obj" || { echo "check_cuda_build: $cu was not compiled" >&2; exit 1; }
done
# The registration calls are imports from libcudart. No grep -q here: under pipefail
# it makes nm die of SIGPIPE, and the check would fail on a good library.
nm -D "$so" | grep 'cudaLaunchKernel\|__cudaRegisterFatBinary' >/dev/null \
  || nm "$so" | grep '__cudaRegisterFatBinary' >/dev/null \
  || { echo "check_cuda_build: $so holds no CUDA kernels" >&2; exit 1; }
echo "check_cuda_build: OK ($(du -h "$so" | cut -f1) $so, arch ${TORCH_CUDA_ARCH_LIST:-9.0})"
