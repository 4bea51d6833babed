"""Benchmark the finite-width NTK methods on the same inputs, in one run."""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

import torch_ntk
from torch_ntk import empirical_ntk, ops
from torch_ntk.empirical.mlp_plan import StructuredPlan

from .common import (
    cuda_peak, float32_matmul, interleaved, is_oom, parse_suite_args, results_dir, short, sync,
    wait_for_quiet, write_json,
)
from .empirical_measure import (
    FLOP_PAIRS, PRECISIONS, ROOFLINE_OF, flops, make_problem, run_worker, worker,
)
from .empirical_report import kernel_summary, markdown

FULL_CASES = [
    dict(name="w1024_d4_n256_nl1", width=1024, depth=4, n=256, n_out=1, mode="full",
         func=("unbounded", "bounded"), target="structured >= 100x faster than jacobian"),
    dict(name="w1024_d4_n256_nl10", width=1024, depth=4, n=256, n_out=10, mode="full",
         func=("unbounded", "bounded"),
         target="torch.func runs out of memory; structured completes"),
    dict(name="w2048_d4_n2048_nl1", width=2048, depth=4, n=2048, n_out=1, mode="full",
         func=("unbounded",), distinct_x2=True,
         target="structured >= composite; FLOP/s >= 80% of a 2048^3 matmul"),
    dict(name="w4096_d4_n4096_nl1", width=4096, depth=4, n=4096, n_out=1, mode="full",
         memory_only=True, target="peak resident memory < 4 GB"),
    dict(name="w1024_d4_n1024_nl1_kernel", width=1024, depth=4, n=1024, n_out=1, mode="full",
         kernel=True, target="the op against its GEMMs alone and the eager and compiled "
         "composites; bf16/bf16x3 emulated (no speed-up on CPU), their error vs float64"),
    dict(name="sweep", mode="full", opt_in=True,
         sweep=dict(width=(256, 1024), depth=(2, 4, 8), n=(128, 512), n_out=(1, 10)),
         target="structured vs the eager composite over width x depth x N x n_L"),
]

QUICK_CASES = [
    dict(name="w256_d4_n64_nl1", width=256, depth=4, n=64, n_out=1, mode="full",
         func=("unbounded", "bounded"), target="smoke"),
    dict(name="w256_d4_n64_nl10", width=256, depth=4, n=64, n_out=10, mode="full",
         func=("unbounded",), target="smoke"),
    dict(name="w512_d4_n512_nl1", width=512, depth=4, n=512, n_out=1, mode="full", func=(),
         distinct_x2=True, target="smoke"),
    dict(name="w1024_d4_n1024_nl1", width=1024, depth=4, n=1024, n_out=1, mode="full",
         memory_only=True, target="smoke"),
    dict(name="w256_d4_n256_nl1", width=256, depth=4, n=256, n_out=1, mode="full", kernel=True,
         target="smoke (the GPU kernel case, small)"),
]

# Sized for about a minute on an H200 (about 50 TFLOP/s float32 without tensor cores):
# the w4096 kernel case's Gram GEMMs take about 20 ms, the whole row set a few seconds
# per round; torch.compile and the torch.func subprocess dominate.
GPU_CASES = [
    dict(name="w4096_d4_n4096_nl1", width=4096, depth=4, n=4096, n_out=1, mode="full",
         kernel=True, target="structured op <= 1.3x the Gram GEMMs alone (float32); "
         "tf32/bf16 speedup and error vs float64"),
    dict(name="w1024_d4_n256_nl1", width=1024, depth=4, n=256, n_out=1, mode="full",
         func=("unbounded", "bounded"), target="structured >> jacobian"),
    dict(name="w1024_d4_n256_nl10", width=1024, depth=4, n=256, n_out=10, mode="full",
         func=("unbounded",),
         target="torch.func runs out of memory under the cap; structured completes"),
]

GPU_CASES.append(dict(name="sweep_gpu", mode="full", opt_in=True,
                      sweep=dict(width=(1024, 4096), depth=(2, 4, 8), n=(1024, 2048),
                                 n_out=(1, 10)),
                      target="structured vs the eager composite over width x depth x N x n_L"))

GPU_QUICK_CASES = [
    dict(name="w512_d4_n512_nl1_gpu", width=512, depth=4, n=512, n_out=1, mode="full",
         kernel=True, target="smoke"),
    dict(name="w256_d4_n64_nl1_gpu", width=256, depth=4, n=64, n_out=1, mode="full",
         func=("unbounded",), target="smoke"),
]

CASES = {("cpu", False): FULL_CASES, ("cpu", True): QUICK_CASES,
         ("cuda", False): GPU_CASES, ("cuda", True): GPU_QUICK_CASES}
ALL_CASES = [c for cases in CASES.values() for c in cases]

# ---------------------------------------------------------------------------------
# the eager composite


def composite(model, x1, x2, mode):
    """The structured formula in eager torch, on the features the structured path uses."""
    plan = StructuredPlan.of(model)
    cw, cb = plan.coefficients()
    a1, d1 = plan.features(x1)
    a2, d2 = (a1, d1) if x2 is None else plan.features(x2)
    return gram_composite(a1, d1, a2, d2, cw, cb, mode)


def gram_composite(a1, d1, a2, d2, cw, cb, mode):
    """Σ_l (c_w A1 A2ᵀ + c_b) ⊙ (D1 D2ᵀ) by GEMMs and in-place Hadamard updates."""
    n1, n2, nl = a1[0].shape[0], a2[0].shape[0], d1[0].shape[1]
    out = None
    for A1, D1, A2, D2, w, b in zip(a1, d1, a2, d2, cw, cb):
        ga = torch.mm(A1, A2.t()).mul_(w).add_(b)
        m = D1.shape[2]
        if mode == "trace":
            term = ga.mul_(torch.mm(D1.reshape(n1, nl * m), D2.reshape(n2, nl * m).t()))
        else:
            gd = torch.mm(D1.reshape(n1 * nl, m), D2.reshape(n2 * nl, m).t()).view(n1, nl, n2, nl)
            if mode == "diagonal":
                term = gd.diagonal(dim1=1, dim2=3).mul(ga[:, :, None])
            else:
                term = gd.permute(0, 2, 1, 3).mul(ga[:, :, None, None])
        out = term if out is None else out.add_(term)
    return out


def gram_gemms(a1, d1, a2, d2, mode):
    """Only the GEMMs of :func:`gram_composite` (per layer A1 A2ᵀ and D1 D2ᵀ), nothing else."""
    n1, n2, nl = a1[0].shape[0], a2[0].shape[0], d1[0].shape[1]
    for A1, D1, A2, D2 in zip(a1, d1, a2, d2):
        torch.mm(A1, A2.t())
        m = D1.shape[2]
        if mode == "trace":
            torch.mm(D1.reshape(n1, nl * m), D2.reshape(n2, nl * m).t())
        else:
            torch.mm(D1.reshape(n1 * nl, m), D2.reshape(n2 * nl, m).t())


# ---------------------------------------------------------------------------------
# cases


def run_case(case: dict, args) -> dict:
    if case.get("kernel"):
        return run_kernel_case(case, args)
    if case.get("sweep"):
        return run_sweep_case(case, args)
    device = args.device
    result = dict(case=case, rows=[], load_at_start=wait_for_quiet(args))
    rows = result["rows"]
    cap = int(args.func_cap_gb * 2**30)

    if case.get("memory_only"):
        spec = dict(case=case, device=device, measurements=[dict(kind="memory")], repeats=1)
        r = run_worker(spec, timeout=args.func_timeout * 5)[0]
        fl = flops(case, False)
        if r["status"] == "ok":
            r["gflops"] = fl["total"] / r["seconds"] / 1e9
        rows.append(dict(method="structured", variant="x2=None, own process", **r))
        return result

    model, x, x2 = make_problem(case, device)
    w = case["width"]
    a = torch.randn(w, w, device=device)
    b = torch.randn(w, w, device=device)
    # In-process contenders run interleaved, round after round, so that a busy machine
    # slows them alike; each reports the median (and best) of its rounds.
    calls = {("matmul", f"{w}^3 float32"): lambda: a @ b}
    variants = [("x2=None", None)] + ([("x2!=x1", x2)] if x2 is not None else [])
    for label, second in variants:
        calls[("structured", label)] = lambda second=second: empirical_ntk(
            model, x, second, mode=case["mode"], method="structured", progress=False)
        calls[("composite", label)] = lambda second=second: composite(
            model, x, second, case["mode"])
    results = {key: fn() for key, fn in calls.items()}  # warm-up; kept for the comparison
    sync(device)
    times = interleaved(calls, args.repeats, device)
    mm_rate = 2 * w**3 / statistics.median(times[("matmul", f"{w}^3 float32")]) / 1e9
    for (method, label), ts in times.items():
        sec = statistics.median(ts)
        row = dict(method=method, variant=label, status="ok", seconds=sec, best=min(ts),
                   repeats=len(ts))
        if method == "matmul":
            row["gflops"] = mm_rate
        else:
            fl = flops(case, label != "x2=None")["total"]
            row.update(gflops=fl / sec / 1e9, matmul_fraction=fl / sec / 1e9 / mm_rate)
        if method == "composite":
            k, kc = results[("structured", label)], results[(method, label)]
            row["max_rel_diff"] = float((kc - k).abs().max() / k.abs().max())
        rows.append(row)
    del a, b, results

    measurements = [dict(kind="func", method=method, bounded=variant == "bounded",
                         label=f"{variant}, cap {args.func_cap_gb:g} GB")
                    for method in ("jacobian", "ntk_vp") for variant in case.get("func", ())]
    # CPU: one fresh process per measurement (its own memory cap and high-water mark);
    # CUDA: one process per case (starting CUDA costs seconds each time).
    groups = [measurements] if device == "cuda" else [[m] for m in measurements]
    for group in groups:
        if not group:
            continue
        spec = dict(case=case, device=device, measurements=group, cap_bytes=cap,
                    repeats=args.repeats)
        load = wait_for_quiet(args)
        for m, r in zip(group, run_worker(spec, timeout=args.func_timeout * len(group))):
            r["load_at_start"] = load
            if r["status"] == "ok":
                r["gflops"] = flops(case, False)["total"] / r["seconds"] / 1e9
            rows.append(dict(method=m["method"], variant=m["label"], **r))
    # Time relative to the structured row of the same variant (x2=None for torch.func).
    structured = {r["variant"]: r for r in rows if r["method"] == "structured"}
    for r in rows:
        if r["method"] != "matmul" and r["status"] == "ok" and "vs_structured" not in r:
            base = structured.get(r["variant"], structured.get("x2=None"))
            r["vs_structured"] = r["seconds"] / base["seconds"]
            if "best" in r and "best" in base:
                r["vs_structured_best"] = r["best"] / base["best"]
    return result


def _errors(k: torch.Tensor, ref: torch.Tensor) -> dict:
    """Relative error of ``k`` against the float64 ``ref``: Frobenius and max-abs."""
    diff = k.double() - ref
    return dict(err_fro=float(diff.norm() / ref.norm()),
                err_max=float(diff.abs().max() / ref.abs().max()))


def _precision(precision: str) -> tuple[dict, str]:
    """(keyword arguments of the op, torch float32 matmul precision) for a variant.
    precision="highest" is the op's default and is not passed, so the "highest" rows
    also run on a torch_ntk that predates the argument."""
    if precision == "highest":
        return {}, "highest"
    if precision == "tf32" and "tf32" not in getattr(ops, "PRECISIONS", ()):
        return {}, "high"
    return {"precision": precision}, "highest"


def _op(a1, d1, a2, d2, cw, cb, mode, precision):
    extra, matmul = _precision(precision)
    with float32_matmul(matmul):
        return ops.structured_ntk(a1, d1, a2, d2, cw, cb, mode, **extra)


def _end_to_end(model, x, mode, precision):
    extra, matmul = _precision(precision)
    with float32_matmul(matmul):
        return empirical_ntk(model, x, mode=mode, method="structured", progress=False, **extra)


def run_sweep_case(case: dict, args) -> dict:
    """Structured (end to end) against the eager composite on every point of the grid
    case["sweep"] (width × depth × N × n_L; x2 = None), interleaved round by round; a
    point that runs out of memory is recorded as such and the sweep goes on."""
    import itertools

    device, grid = args.device, case["sweep"]
    result = dict(case=case, rows=[], load_at_start=wait_for_quiet(args))
    repeats = max(1, min(args.repeats, 3 if device == "cuda" else 2))
    for width, depth, n, n_out in itertools.product(grid["width"], grid["depth"], grid["n"],
                                                    grid["n_out"]):
        point = dict(width=width, depth=depth, n=n, n_out=n_out, mode=case["mode"])
        row = dict(point)
        try:
            model, x, _ = make_problem(point, device)
            calls = {
                "structured": lambda: empirical_ntk(model, x, mode=case["mode"],
                                                    method="structured", progress=False),
                "composite": lambda: composite(model, x, None, case["mode"]),
            }
            k_s, k_c = (fn() for fn in calls.values())  # warm-up, kept for the comparison
            row["max_rel_diff"] = float((k_c - k_s).abs().max() / k_s.abs().max())
            del k_s, k_c
            times = interleaved(calls, repeats, device)
            sec = {key: statistics.median(ts) for key, ts in times.items()}
            row.update(status="ok", structured_s=sec["structured"], composite_s=sec["composite"],
                       composite_over_structured=sec["composite"] / sec["structured"],
                       gflops=flops(point, False)["total"] / sec["structured"] / 1e9)
        except Exception as error:  # noqa: BLE001 — recorded, the sweep goes on
            row.update(status="oom" if is_oom(error) else "error", message=short(error))
        result["rows"].append(row)
        print(f"  sweep {point}: {row.get('status')}", file=sys.stderr, flush=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return result


def run_kernel_case(case: dict, args) -> dict:
    """The fused op against the GEMMs alone, the eager and compiled composites, and its
    reduced precisions; every kernel's error against float64 (see the module docstring)."""
    device, mode = args.device, case["mode"]
    result = dict(case=case, rows=[], load_at_start=wait_for_quiet(args))
    rows = result["rows"]
    model, x, x2 = make_problem(case, device)
    plan = StructuredPlan.of(model)
    cw, cb = plan.coefficients()
    a1, d1 = plan.features(x)
    a2, d2 = plan.features(x2)
    model64 = copy.deepcopy(model).double()
    ref = {"x2=None": empirical_ntk(model64, x.double(), mode=mode, method="structured",
                                    progress=False),
           "x2!=x1": empirical_ntk(model64, x.double(), x2.double(), mode=mode,
                                   method="structured", progress=False)}
    del model64
    # The op's own arithmetic error: the same float32 features, upcast, through the op in
    # float64 (the model-level reference above also sees float32 forward passes, e.g.
    # ReLU units whose sign flips between float32 and float64).
    up = [[t.double() for t in ts] for ts in (a1, d1, a2, d2)]
    ref_op = {"x2=None": ops.structured_ntk(up[0], up[1], None, None, cw, cb, mode),
              "x2!=x1": ops.structured_ntk(*up, cw, cb, mode)}
    del up

    # Rooflines: a square product large enough to be steady and quick (8192 on CUDA for
    # the full-size case: the GPU's peak rates).
    if device == "cuda":
        n_mm = 8192 if case["width"] >= 2048 else 2048
    else:
        n_mm = max(case["width"], 512)
    mats = {kind: (torch.randn(n_mm, n_mm, device=device).to(dtype),
                   torch.randn(n_mm, n_mm, device=device).to(dtype))
            for kind, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}

    def matmul(kind):
        a, b = mats["float32" if kind == "tf32" else kind]
        with float32_matmul("high" if kind == "tf32" else "highest"):
            return torch.mm(a, b)

    # key -> (fn, info): info holds the row's fixed fields and how to compare it.
    calls: dict = {}
    for kind in ("float32", "tf32", "bfloat16"):
        if kind == "tf32" and device != "cuda":
            continue  # TF32 is a tensor-core format; the CPU has no such matmul
        calls[("matmul", f"{n_mm}^3 {kind}")] = (lambda kind=kind: matmul(kind),
                                                  dict(flops=2 * n_mm**3, roofline=kind))
    fc = flops(case, False)
    calls[("features", "forward + cotangents")] = (lambda: plan.features(x),
                                                   dict(flops=fc["forward"] + fc["cotangent"]))
    for label, (b_a, b_d) in (("x2=None", (a1, d1)), ("x2!=x1", (a2, d2))):
        gram = flops(case, label != "x2=None")["gram"]
        calls[("gemms alone", label)] = (lambda b_a=b_a, b_d=b_d: gram_gemms(a1, d1, b_a, b_d, mode),
                                         dict(flops=gram, roofline="float32"))
    for precision in PRECISIONS:
        for label, (b_a, b_d) in (("x2=None", (None, None)), ("x2!=x1", (a2, d2))):
            calls[("structured op only", f"{label}, {precision}")] = (
                lambda b_a=b_a, b_d=b_d, p=precision: _op(a1, d1, b_a, b_d, cw, cb, mode, p),
                dict(flops=flops(case, label != "x2=None")["gram"], ref=label,
                     precision=precision, roofline=ROOFLINE_OF[precision]))
        calls[("structured", f"x2=None, {precision}")] = (
            lambda p=precision: _end_to_end(model, x, mode, p),
            dict(flops=flops(case, False)["total"], ref="x2=None", precision=precision))
    calls[("composite", "x2=None")] = (lambda: composite(model, x, None, mode),
                                       dict(flops=flops(case, False)["total"], ref="x2=None"))
    compiled = torch.compile(composite, backend=args.compile_backend)
    calls[("composite compiled", "x2=None")] = (lambda: compiled(model, x, None, mode),
                                                dict(flops=flops(case, False)["total"],
                                                     ref="x2=None", compile=True))

    # Warm-up (the first call compiles; its output gives the error against float64 and
    # the difference from the end-to-end structured kernel, computed first).
    ok, info_rows, anchor = {}, {}, None
    first = ("structured", "x2=None, highest")
    for key in sorted(calls, key=lambda key: key != first):
        fn, info = calls[key]
        row = dict(method=key[0], variant=key[1], status="ok")
        try:
            t0 = time.perf_counter()
            k = fn()
            sync(device)
            if info.get("compile"):
                row["compile_s"] = time.perf_counter() - t0
                k = fn()  # a second call settles any recompilation
            if "ref" in info:
                row.update(_errors(k, ref[info["ref"]]))
            if key[0] == "structured op only":
                errors = _errors(k, ref_op[info["ref"]])
                row.update(op_err_fro=errors["err_fro"], op_err_max=errors["err_max"])
            if key == ("structured", "x2=None, highest"):
                anchor = k
            elif anchor is not None and info.get("ref") == "x2=None":
                row["max_rel_diff"] = float((k - anchor).abs().max() / anchor.abs().max())
            del k
            ok[key] = fn
        except Exception as error:  # recorded, not fatal (e.g. a compiler failure)
            text = str(error)
            if "precision" in text and ("unexpected keyword" in text or "one of" in text):
                status = "unsupported"  # a torch_ntk without this precision
            else:
                status = "oom" if is_oom(error) else "error"
            row.update(status=status, message=short(error))
        info_rows[key] = row
        if device == "cuda":
            torch.cuda.empty_cache()
    del anchor, ref, ref_op
    sync(device)
    times = interleaved({key: ok[key] for key in calls if key in ok}, args.repeats, device)

    rates = {}
    for key, (fn, info) in calls.items():
        row = info_rows[key]
        if key in times:
            ts = times[key]
            row.update(seconds=statistics.median(ts), best=min(ts), repeats=len(ts))
            if "flops" in info:
                row["gflops"] = info["flops"] / row["seconds"] / 1e9
            if key[0] == "matmul":
                rates[info["roofline"]] = row["gflops"]
            if device == "cuda" and key[0] != "matmul":
                row["peak_MB"] = cuda_peak(fn) / 2**20
        if "precision" in info:
            row["precision"] = info["precision"]
            if _precision(info["precision"])[1] == "high":
                row.setdefault("message", "precision='highest' under torch's float32 matmul "
                                          "precision 'high'")
        rows.append(row)

    by_key = {(r["method"], r["variant"]): r for r in rows}

    def seconds(method, variant):
        r = by_key.get((method, variant), {})
        return r.get("seconds")

    for r in rows:
        if "seconds" not in r:
            continue
        method, variant = r["method"], r["variant"]
        info = calls[(method, variant)][1]
        roof = info.get("roofline")
        if method != "matmul" and roof:
            if roof == "bfloat16/3" and "bfloat16" in rates:
                rates[roof] = rates["bfloat16"] / 3
            if roof not in rates:  # no TF32 roofline on CPU
                roof = "float32"
            if roof in rates:
                r["roofline"] = roof
                r["roofline_fraction"] = r["gflops"] / rates[roof]
        side = variant.split(",")[0]
        if method == "structured op only" and seconds("gemms alone", side):
            r["vs_gemms"] = r["seconds"] / seconds("gemms alone", side)
        if method == "structured" and seconds("gemms alone", side) and seconds(
                "features", "forward + cotangents"):
            r["vs_gemms"] = r["seconds"] / (seconds("gemms alone", side)
                                            + seconds("features", "forward + cotangents"))
        precision = r.get("precision")
        if precision and precision != "highest":
            base = seconds(method, variant.replace(precision, "highest"))
            if base:
                r["speedup_vs_highest"] = base / r["seconds"]
        if method.startswith("composite") and seconds("structured", "x2=None, highest"):
            r["vs_structured"] = r["seconds"] / seconds("structured", "x2=None, highest")
    result["summary"] = kernel_summary(by_key)
    return result


def select_cases(cases: list[dict], spec: str) -> list[dict]:
    """Cases named in the comma-separated ``spec`` (exact names, else substrings); without
    a spec, every case that is not opt-in (the sweeps)."""
    if not spec:
        return [c for c in cases if not c.get("opt_in")]
    names = [c["name"] for c in cases]
    wanted = set()
    for token in spec.split(","):
        exact = [n for n in names if n == token]
        wanted.update(exact or [n for n in names if token in n])
    return [c for c in cases if c["name"] in wanted]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument("--cases", default="",
                        help="comma-separated case names (or substrings) to run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per measurement (default 5 on CPU, 10 on CUDA)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled composite (default inductor)")
    parser.add_argument("--func-cap-gb", type=float, default=10.0,
                        help="memory cap of the torch.func subprocesses (GB)")
    parser.add_argument("--func-timeout", type=float, default=120.0,
                        help="wall-clock limit per torch.func measurement (s)")
    parser.add_argument("--quiet-load", type=float, default=1.5,
                        help="wait for the 1-minute load average to drop below this ...")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="... for at most this many seconds before each measurement "
                             "(default 120 on CPU, 0 on CUDA)")
    parser.add_argument("--json", "--out", dest="json", default=None,
                        help="JSON path (default benchmarks/results/empirical_<device>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv=None, *, default_dir: str | None = None,
         prog: str = "python -m torch_ntk.bench.empirical") -> dict | None:
    """Run the benchmark with command-line arguments ``argv``; returns the JSON payload."""
    parser = build_parser()
    args, argv = parse_suite_args(parser, argv, prog)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return None
    if args.repeats is None:
        args.repeats = 10 if args.device == "cuda" else 5
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.device == "cuda" else 120.0
    path = args.json or os.path.join(default_dir or results_dir(), f"empirical_{args.device}.json")
    cases = select_cases(CASES[(args.device, args.quick)], args.cases)
    if args.cases and not cases:
        names = ", ".join(c["name"] for c in CASES[(args.device, args.quick)])
        parser.error(f"argument --cases: no case matches {args.cases!r}; the cases are {names}")
    t0 = time.perf_counter()
    results = []
    for case in cases:
        print(f"running {case['name']} ...", file=sys.stderr, flush=True)
        results.append(run_case(case, args))
        results[-1].update(flop_pairs=FLOP_PAIRS, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    meta = dict(
        torch=torch.__version__, torch_ntk=torch_ntk.__version__, python=platform.python_version(),
        machine=platform.machine(), processor=platform.processor() or platform.uname().processor,
        threads=torch.get_num_threads(), device=args.device, quick=args.quick,
        date=time.strftime("%Y-%m-%d %H:%M:%S"), command=" ".join([prog, *argv]),
        wall_s=round(time.perf_counter() - t0, 1),
    )
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    if args.cases and os.path.exists(path):  # replace those cases, keep the others
        with open(path) as f:
            old = json.load(f)
        fresh = {r["case"]["name"] for r in results}
        kept = [r for r in old.get("results", []) if r["case"]["name"] not in fresh]
        # every earlier run of a case rerun now is kept beside it (rendered: median, range)
        earlier = {r["case"]["name"]: r for r in old.get("results", [])
                   if r["case"]["name"] in fresh}
        for r in results:
            if r["case"]["name"] in earlier:
                prev = dict(earlier[r["case"]["name"]])
                r["earlier_runs"] = prev.pop("earlier_runs", []) + [prev]
        order = [c["name"] for c in ALL_CASES]
        results = sorted(kept + results, key=lambda r: order.index(r["case"]["name"])
                         if r["case"]["name"] in order else len(order))
        meta["runs"] = old.get("meta", {}).get("runs", [old.get("meta", {}).get("command")])
    meta.setdefault("runs", [])
    meta["runs"] = [m for m in meta["runs"] if m] + [f"{meta['date']}: {meta['command']}"]
    payload = dict(meta=meta, results=results)
    write_json(path, payload)
    print(markdown(results))
    print(f"\nJSON: {path}")
    return payload


if __name__ == "__main__":
    main()
