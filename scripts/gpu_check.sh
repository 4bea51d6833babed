#!/usr/bin/env bash
# One script for a lent GPU machine without network (Python 3.12, torch 2.11+cu130,
# nvcc 13.0, ninja, pybind11, pytest): build from source, CUDA tests, compute-sanitizer
# memcheck on small cases, then the GPU benchmarks. Everything lands in $OUT (the device
# tool's output folder; default results/gpu). Sized to finish in under 8 minutes on one
# H200; each step has its own time limit so one slow step cannot eat the lease.
#
#   OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%-18s rc=%-3s %4ss\n' "$name" "$rc" "$(( $(date +%s) - start ))" | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

{ nvidia-smi; "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/environment.txt" 2>&1

export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! step build 300 "$PY" setup.py build_ext --inplace; then
  tail -40 "$OUT/build.log"
  exit 1
fi
"$PY" -c "import torch_ntk; assert torch_ntk.ops.cuda_built(), 'built without CUDA'" >> "$OUT/build.log" 2>&1 \
  || { echo "the build has no CUDA ops" | tee -a "$SUMMARY"; exit 1; }

step cuda_tests 240 "$PY" -m pytest tests -q -k cuda -p no:cacheprovider -x \
  --junitxml="$OUT/cuda_tests.xml"
if command -v compute-sanitizer > /dev/null; then
  step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" scripts/gpu_smoke.py
else
  echo "memcheck           skipped (no compute-sanitizer)" | tee -a "$SUMMARY"
fi
step smoke 60 "$PY" scripts/gpu_smoke.py
step bench_analytic 200 "$PY" benchmarks/analytic.py --device cuda --out "$OUT/analytic_cuda.json"
step bench_empirical 200 "$PY" benchmarks/empirical.py --device cuda --quiet-wait 0 \
  --json "$OUT/empirical_cuda.json"
step bench_tracker 90 "$PY" benchmarks/tracker.py --device cuda --out "$OUT/tracker_cuda.json"

echo "== results in $OUT =="
cat "$SUMMARY"
for f in "$OUT"/bench_*.log; do
  [ -f "$f" ] || continue
  echo "== $(basename "$f")"
  grep '^|' "$f" | tail -20
done
tail -3 "$OUT/cuda_tests.log"
exit "$status"
