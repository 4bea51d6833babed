#!/usr/bin/env bash
# One script for a lent GPU machine without network (Python 3.12, torch 2.11+cu130,
# nvcc 13.0, ninja, pybind11, pytest): build from source, a smoke check of every op
# against the CPU, the CUDA tests (tests/test_cuda_plan.py and tests/test_precision_depth.py
# hold issue 28's GPU test plan: series activations f32/f64, the series fallback, the
# float32 exact diagonal, the activation op in float32, depth 1000+, the CNN shared-memory
# opt-in path and a float32 Flatten ReLU net, side streams, TF32 on, non-contiguous and
# channels_last inputs, N = 3000), issue 28's targets (targets: float32 ReLU depth 5
# against the CPU float32; cifar: the CIFAR-shaped CNN case at N = 16 and 32, extrapolated
# to N = 2000 beside scripts/cnn_model.py's FLOP/byte bound), the GPU benchmarks (the CNN
# suites --quick), then compute-sanitizer memcheck, racecheck, synccheck and initcheck
# on small cases. Logs and results go to $RUN_DIR; after every step $OUT (the device
# tool's output folder, which takes back few files; default results/gpu) gets a fresh
# summary.txt and gpu_run.tar.gz of $RUN_DIR, so even a run cut short returns what it
# did. Each step has its own time limit, so one slow or failing step cannot eat
# the lease and the later steps still report. The limits add up to 16 minutes; the steps
# usually end far sooner. For one 10-minute device call (issue 28's run):
#   STEPS="build cuda_tests targets cifar sanitizers"   # limits 180+140+30+90+160 = 600 s
# (typically about 5 minutes: the build ~2, the tests ~1, the sanitizers ~1.5).
# The distributed step runs `torchrun --nproc_per_node=1 -m torch_ntk kernel --device
# cuda` (NCCL with world size 1: init, barriers, all-gathers) for the MLP NTK, the
# empirical NTK (the CUDA tile path with cached band features) and a CNTK, each checked
# against the CPU float64 kernel.
#
#   OUT=/some/dir bash scripts/gpu_check.sh            # everything
#   OUT=/some/dir STEPS="build smoke" bash scripts/gpu_check.sh   # some steps only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
RUN_DIR=${RUN_DIR:-$(mktemp -d)/gpu_run}
mkdir -p "$OUT" "$RUN_DIR"
PY=${PYTHON:-python3}
STEPS=${STEPS:-build smoke cuda_tests targets cifar distributed bench sanitizers figures}
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
  step cuda_tests 140 "$PY" -m pytest tests -q -k cuda -p no:cacheprovider -rfE $timeout_opt \
    --junitxml="$RUN_DIR/cuda_tests.xml"
fi
targets_check() {  # issue 28: float32 ReLU depth 5 on CUDA within 3e-7 of the CPU float32
  "$PY" - <<'PYEOF'
import json, os, torch, torch_ntk as tn
torch.manual_seed(0)
spec = tn.mlp_spec([20] + [64] * 5 + [1], "relu", 1.4, 0.1)
x = torch.randn(513, 20)
res = {}
for name, b in (("sym", None), ("rect", torch.randn(257, 20))):
    cpu = tn.analytic_kernels(spec, x, b).ntk
    gpu = tn.analytic_kernels(spec, x.cuda(), None if b is None else b.cuda()).ntk.cpu()
    err = float((gpu.double() - cpu.double()).abs().max() / cpu.double().abs().max())
    res[name] = err
    print(f"relu depth 5 float32 {name}: CUDA vs CPU max rel err {err:.2e} (target 3e-7): "
          f"{'met' if err <= 3e-7 else 'MISSED'}")
json.dump(res, open(os.path.join(os.environ["RUN_DIR"], "targets.json"), "w"))
raise SystemExit(0 if max(res.values()) <= 3e-7 else 1)
PYEOF
}

distributed_check() {  # NCCL (world size 1) and the CUDA tile path, against the CPU
  local d="$RUN_DIR/distributed"
  mkdir -p "$d"
  "$PY" - "$d" <<'PYEOF' || return 1
import sys, numpy as np
d = sys.argv[1]
g = np.random.default_rng(0)
np.save(f"{d}/x.npy", g.standard_normal((700, 16)))
np.save(f"{d}/img.npy", g.standard_normal((90, 2, 8, 8)))
PYEOF
  local run=("$PY" -m torch.distributed.run --nproc_per_node=1 --master_addr 127.0.0.1
             --master_port 29533 -m torch_ntk kernel --device "${DIST_DEVICE:-cuda}" --no-progress)
  "${run[@]}" "$d/x.npy" --widths 16 256 256 1 --kind ntk --tile-size 300 -o "$d/ntk.npy" \
    --stats "$d/ntk.json" || return 1
  "${run[@]}" "$d/x.npy" --widths 16 256 256 2 --kind empirical --seed 1 --tile-size 300 \
    -o "$d/emp.npy" --stats "$d/emp.json" || return 1
  "${run[@]}" "$d/img.npy" --conv 16 16 --widths 1 --kind ntk --tile-size 40 \
    -o "$d/cntk.npy" --stats "$d/cntk.json" || return 1
  "$PY" - "$d" <<'PYEOF'
import json, sys, numpy as np, torch, torch_ntk as tn
from torch import nn
d = sys.argv[1]
x = torch.from_numpy(np.load(f"{d}/x.npy"))
img = torch.from_numpy(np.load(f"{d}/img.npy"))
torch.manual_seed(1)
mlp = tn.ntk_mlp([16, 256, 256, 2], "relu", bias_std=0.1, dtype=torch.float64)
cnn = nn.Sequential(tn.nn.NTKConv2d(2, 16, 3, padding="same"), nn.ReLU(),
                    tn.nn.NTKConv2d(16, 16, 3, padding="same"), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), tn.NTKLinear(16, 1))
refs = {"ntk": tn.analytic_kernels(tn.mlp_spec([16, 256, 256, 1], "relu"), x).ntk,
        "emp": tn.empirical_ntk(mlp, x, mode="trace"),
        "cntk": tn.analytic_kernels(cnn, img).ntk}
bad = []
for name, ref in refs.items():
    got = torch.from_numpy(np.load(f"{d}/{name}.npy"))
    err = float((got - ref).abs().max() / ref.abs().max())
    stats = json.load(open(f"{d}/{name}.json"))
    print(f"{name}: rel err {err:.2e} vs CPU float64; {stats['tiles_computed']} tiles, "
          f"world size {stats['world_size']}, method {stats['method']}, "
          f"features {stats['feature_samples']}, {stats['seconds']:.2f} s")
    if not err < 1e-10 or stats["world_size"] != 1:
        bad.append(name)
sys.exit(f"mismatch: {bad}" if bad else 0)
PYEOF
}

export RUN_DIR PY
want targets && step targets 30 bash -c "$(declare -f targets_check); targets_check"
# The CIFAR-shaped CNN case, timed on its own (N = 16 and 32, extrapolated to N = 2000).
want cifar && step cifar 90 "$PY" scripts/cnn_model.py --time --out "$RUN_DIR"
# (DIST_DEVICE=cpu runs the same check with gloo on a machine without a GPU)
want distributed && step distributed 90 bash -c "$(declare -f distributed_check); distributed_check"
if want bench; then  # the CNN suites --quick: the full CIFAR case is the cifar step's
  step bench 120 bash -c "for s in analytic empirical tracker; do \"$PY\" -m torch_ntk bench \$s \
    --device cuda --out \"$RUN_DIR\" || exit 1; done; for s in cnn cnn_structured; do \"$PY\" \
    -m torch_ntk bench \$s --device cuda --quick --out \"$RUN_DIR\" || exit 1; done"
fi
if want sanitizers || want memcheck; then
  if command -v compute-sanitizer > /dev/null; then
    # memcheck and initcheck on every op (small inputs); racecheck and synccheck on the
    # kernels with shared memory and barriers (the CNN block, the symmetric analytic tiles).
    for tool in memcheck initcheck racecheck synccheck; do
      step "$tool" 40 compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$PY" scripts/gpu_smoke.py --small
    done
  else
    echo "sanitizers       skipped (no compute-sanitizer)" | tee -a "$SUMMARY"
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
grep -h -E "relu depth 5|cifar" "$RUN_DIR"/targets.log "$RUN_DIR"/cifar.log 2>/dev/null
grep -H "ERROR SUMMARY\|RACECHECK SUMMARY" "$RUN_DIR"/{memcheck,initcheck,racecheck,synccheck}.log 2>/dev/null
exit "$status"
