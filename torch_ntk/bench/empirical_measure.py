"""The empirical suite's measurements: its problem, FLOP counts, timed runs and workers.

torch.func and memory measurements run in fresh processes under a memory cap
(:func:`run_worker` starts ``python -m torch_ntk.bench.empirical --worker SPEC``).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import torch_ntk
from torch_ntk import empirical_ntk, ntk_mlp

from .common import elapsed, is_oom, rss_bytes, short, sync

# Precision variants of the kernel cases. "tf32" is the op's own precision="tf32" where
# torch_ntk has one, else precision="highest" under torch.set_float32_matmul_precision
# ("high"), which lets cuBLAS use TF32 for the op's float32 Gram products.
PRECISIONS = ("highest", "tf32", "bf16", "bf16x3")
# The matmul roofline each precision is compared with (bf16x3: three bf16 products).
ROOFLINE_OF = {"highest": "float32", "tf32": "tf32", "bf16": "bfloat16", "bf16x3": "bfloat16/3"}


def make_problem(case: dict, device: str):
    torch.manual_seed(0)
    w, nl = case["width"], case["n_out"]
    model = ntk_mlp([w] * case["depth"] + [nl], "relu", device=device, dtype=torch.float32)
    x = torch.randn(case["n"], w, device=device)
    distinct = case.get("distinct_x2") or case.get("kernel")
    x2 = torch.randn(case["n"], w, device=device) if distinct else None
    return model, x, x2


# Results computed since the FLOP count below counts N(N+1)/2 pairs for x2 = None carry
# FLOP_PAIRS; older ones counted N² (an effective rate, ×2N/(N+1) the work done).
FLOP_PAIRS = "x2=None: N(N+1)/2 pairs"


def flops(case: dict, distinct: bool) -> dict:
    """FLOPs of the structured method: forward and cotangent passes, and the Gram
    products over the pairs it computes — N² for x2 ≠ x1, the N(N+1)/2 of one triangle
    for x2 = None (not the N² a full-square method does)."""
    w, d, n, nl = case["width"], case["depth"], case["n"], case["n_out"]
    widths = [w] * d + [nl]
    c = nl * nl if case["mode"] == "full" else nl
    sets = 2 if distinct else 1
    pairs = n * n if distinct else n * (n + 1) / 2
    fwd = sets * sum(2 * n * a * b for a, b in zip(widths[:-1], widths[1:]))
    cot = sets * sum(2 * n * nl * b * a for a, b in list(zip(widths[:-1], widths[1:]))[1:])
    gram = sum(2 * pairs * (a + c * b) for a, b in zip(widths[:-1], widths[1:]))
    return dict(forward=fwd, cotangent=cot, gram=gram, total=fwd + cot + gram)


def timed(fn, device: str, repeats: int) -> list[float]:
    """Seconds of several runs of ``fn`` (already warmed up on a small batch): the first
    run counts when it takes over 2 s, and runs stop after 20 s."""
    times = []
    for k in range(repeats + 1):
        t = elapsed(fn, device)
        if k > 0 or t > 2:
            times.append(t)
        if sum(times) > 20:
            break
    return times


def worker(spec: dict) -> list[dict]:
    """Runs spec["measurements"] (each {"kind": "memory"} or {"kind": "func", "method",
    "bounded"}) on the case's problem, in this process; returns one result each."""
    case, device = spec["case"], spec["device"]
    cap = int(spec.get("cap_bytes") or 0)
    if cap and device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    elif cap:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    model, x, x2 = make_problem(case, device)
    results = []
    for m in spec["measurements"]:
        try:
            if m["kind"] == "memory":
                results.append(memory_measurement(case, device, model, x))
            else:
                results.append(func_measurement(case, device, model, x, x2, m, cap,
                                                 spec["repeats"]))
        except Exception as error:
            results.append(dict(status="oom" if is_oom(error) else "error", message=short(error)))
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def memory_measurement(case, device, model, x) -> dict:
    before = rss_bytes("VmRSS")
    try:  # reset the high-water mark so VmHWM covers only the call
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    k = empirical_ntk(model, x, mode=case["mode"], method="structured", progress=False)
    sync(device)
    seconds = time.perf_counter() - t
    peak_dev = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return dict(status="ok", seconds=seconds, rss_before=before, peak_rss=rss_bytes("VmHWM"),
                peak_device=peak_dev, checksum=float(k.double().sum()))


def func_measurement(case, device, model, x, x2, m, cap, repeats) -> dict:
    kwargs = dict(mode=case["mode"], method=m["method"], progress=False)
    if m["bounded"]:
        kwargs["memory_budget"] = cap // 2
    else:
        kwargs["chunk_size"] = case["n"]
        kwargs["memory_budget"] = 2**62

    def structured():  # timed here too: the ratio then compares runs in the same conditions
        fn = lambda: empirical_ntk(model, x, x2, mode=case["mode"], method="structured",  # noqa: E731
                                   progress=False)
        return [elapsed(fn, device) for _ in range(repeats + 1)][1:]

    before = structured()
    empirical_ntk(model, x[:4], None if x2 is None else x2[:4], **kwargs)  # warm-up
    times = timed(lambda: empirical_ntk(model, x, x2, **kwargs), device, repeats)
    s_times = before + structured()
    seconds, s_seconds = statistics.median(times), statistics.median(s_times)
    return dict(status="ok", seconds=seconds, best=min(times), repeats=len(times),
                structured_seconds=s_seconds, structured_best=min(s_times),
                vs_structured=seconds / s_seconds, vs_structured_best=min(times) / min(s_times))


def run_worker(spec: dict, timeout: float) -> list[dict]:
    """``spec`` run by ``python -m torch_ntk.bench.empirical --worker`` in a fresh process."""
    cmd = [sys.executable, "-m", "torch_ntk.bench.empirical", "--worker", json.dumps(spec)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(torch_ntk.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    count = len(spec["measurements"])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [dict(status="timeout", message=f"did not finish within {timeout:.0f} s")] * count
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return [dict(status="error", message=" | ".join(tail)[:400],
                 returncode=done.returncode)] * count
