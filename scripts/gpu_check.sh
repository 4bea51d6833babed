#!/usr/bin/env bash
# One script for a lent GPU machine without network (Python 3.12, torch 2.11+cu130,
# nvcc 13.0, ninja, pybind11, pytest): build from source, a smoke check of every op
# against the CPU, the CUDA tests, the GPU benchmarks, then compute-sanitizer memcheck
# on small cases. Logs and results go to $RUN_DIR; after every step $OUT (the device
# tool's output folder, which takes back few files; default results/gpu) gets a fresh
# summary.txt and gpu_run.tar.gz of $RUN_DIR, so even a run cut short returns what it
# did. Each step has its own time limit, so one slow or failing step cannot eat
# the lease and the later steps still report. The limits add up to 9.8 minutes; the
# first four steps (STEPS="build smoke cuda_tests bench") to at most 7.8.
#
#   OUT=/some/dir bash scripts/gpu_check.sh            # everything
#   OUT=/some/dir STEPS="build smoke" bash scripts/gpu_check.sh   # some steps only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
RUN_DIR=${RUN_DIR:-$(mktemp -d)/gpu_run}
mkdir -p "$OUT" "$RUN_DIR"
PY=${PYTHON:-python3}
STEPS=${STEPS:-build smoke cuda_tests bench memcheck figures}
SUMMARY="$RUN_DIR/summary.txt"
: > "$SUMMARY"
status=0
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, for scripts/*.py too

want() { [[ " $STEPS " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $RUN_DIR/NAME.log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$RUN_DIR/$name.log" 2>&1
  rc=$?
  printf '%-16s rc=%-3s %4ss\n' "$name" "$rc" "$(( $(date +%s) - start ))" | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || status=1
  publish
  return "$rc"
}

publish() {  # copy the summary and a tarball of $RUN_DIR into $OUT (atomically)
  cp "$SUMMARY" "$OUT/summary.txt.tmp" && mv "$OUT/summary.txt.tmp" "$OUT/summary.txt"
  tar czf "$OUT/gpu_run.tar.gz.tmp" -C "$(dirname "$RUN_DIR")" "$(basename "$RUN_DIR")" \
    && mv "$OUT/gpu_run.tar.gz.tmp" "$OUT/gpu_run.tar.gz"
}

{ nvidia-smi; "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; nproc; } \
  > "$RUN_DIR/environment.txt" 2>&1

if want build; then
  export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  if ! step build 180 "$PY" setup.py build_ext --inplace; then
    tail -40 "$RUN_DIR/build.log"
    exit 1
  fi
fi
"$PY" -c "import torch_ntk; assert torch_ntk.ops.cuda_built(), 'built without CUDA'" >> "$RUN_DIR/build.log" 2>&1 \
  || { echo "the build has no CUDA ops" | tee -a "$SUMMARY"; tail -20 "$RUN_DIR/build.log"; exit 1; }

want smoke && step smoke 40 "$PY" scripts/gpu_smoke.py
if want cuda_tests; then
  timeout_opt=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=60")
  step cuda_tests 100 "$PY" -m pytest tests -q -k cuda -p no:cacheprovider -rfE $timeout_opt \
    --junitxml="$RUN_DIR/cuda_tests.xml"
fi
if want bench; then
  step bench 150 "$PY" -m torch_ntk bench all --device cuda --out "$RUN_DIR"
fi
if want memcheck; then
  if command -v compute-sanitizer > /dev/null; then
    step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$PY" scripts/gpu_smoke.py --small
  else
    echo "memcheck         skipped (no compute-sanitizer)" | tee -a "$SUMMARY"
  fi
fi

if want figures; then  # the paper's figures at --quick settings, through the CLI on CUDA
  step figures 60 "$PY" -m torch_ntk reproduce all --quick --device cuda --no-progress \
    --out "$RUN_DIR/figures"
fi
publish
echo "== results in $OUT/gpu_run.tar.gz =="
cat "$SUMMARY"
grep -h -E "FAILED|passed|failed|rror" "$RUN_DIR"/smoke.log "$RUN_DIR"/cuda_tests.log 2>/dev/null | tail -25
[ -f "$RUN_DIR/bench.log" ] && grep '^|' "$RUN_DIR/bench.log" | tail -40
grep -h "ERROR SUMMARY" "$RUN_DIR"/memcheck.log 2>/dev/null
exit "$status"
