"""Benchmark the finite-width NTK methods on the same inputs, in one run.

    python benchmarks/empirical.py                 # the issue's cases (several minutes on 2 cores)
    python benchmarks/empirical.py --quick         # a small smoke run (seconds)
    python benchmarks/empirical.py --cases w2048   # named cases (exact or substring); their
                                                   # results replace those in the JSON

Methods (all on the model ``ntk_mlp([w, w, w, w, n_L], "relu")``, float32, inputs
x ~ N(0, 1) of size [N, w], seed 0, x2 = None unless stated):

- ``structured``: ``empirical_ntk(method="structured")`` — forward, batched cotangents,
  one fused ``structured_ntk`` op.
- ``composite``: the same features (A_l, D_l), then the eager torch formula
  Σ_l (c_w A1 A2ᵀ + c_b) ⊙ (D1 D2ᵀ) with GEMMs and in-place Hadamard updates.
- ``jacobian``: ``vmap(jacrev)`` Jacobian contraction (PyTorch's NTK tutorial).
  "unbounded" = one block over all samples, as in the tutorial; "bounded" = chunked
  under a memory budget of half the cap.
- ``ntk_vp``: NTK-vector products (vjp + jvp), unbounded / bounded likewise.
- ``matmul``: a plain float32 [w, w] @ [w, w] product (the FLOP/s yardstick).

torch.func methods run in a subprocess whose data segment is capped (RLIMIT_DATA,
``--func-cap-gb``), so running out of memory is reported, not suffered; they also get a
wall-clock limit (``--func-timeout``). Their "× structured" compares with the
structured method timed in that same subprocess, just before and after (same machine
conditions; this machine may be shared). The largest case runs in a subprocess that reads
its resident-memory high-water mark (VmHWM, reset before the call). Times are the median
of ``--repeats`` runs after one warm-up run (``best`` is the fastest; on a shared machine
it is the better estimate of the method's own cost); the in-process contenders (matmul,
structured, composite) run interleaved round by round, so a busy machine slows them
alike. torch.func calls stop repeating after 20 s. Before each case and each torch.func
measurement the script waits (``--quiet-load``, ``--quiet-wait``) for the machine's load
average to drop, and records it.

FLOP counts (nominal): forward Σ_l 2 N n_l m_l per input set, cotangents
Σ_{l≥1} 2 N n_L m_l n_l, Gram products Σ_l 2 N1 N2 (n_l + c m_l) with c = n_L (trace,
diagonal) or n_L² (full). With x2 = None the fused op computes only the tiles on and above
the diagonal (about half the Gram work), so its FLOP/s there are "effective"; the x2 ≠ x1
row has no such discount.

Writes JSON (``--json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch_ntk  # noqa: E402
from torch_ntk import empirical_ntk, ntk_mlp  # noqa: E402
from torch_ntk.empirical import _StructuredPlan  # noqa: E402

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
]


# ---------------------------------------------------------------------------------
# problem and helpers


def make_problem(case: dict, device: str):
    torch.manual_seed(0)
    w, nl = case["width"], case["n_out"]
    model = ntk_mlp([w] * case["depth"] + [nl], "relu", device=device, dtype=torch.float32)
    x = torch.randn(case["n"], w, device=device)
    x2 = torch.randn(case["n"], w, device=device) if case.get("distinct_x2") else None
    return model, x, x2


def flops(case: dict, distinct: bool) -> dict:
    w, d, n, nl = case["width"], case["depth"], case["n"], case["n_out"]
    widths = [w] * d + [nl]
    c = nl * nl if case["mode"] == "full" else nl
    sets = 2 if distinct else 1
    fwd = sets * sum(2 * n * a * b for a, b in zip(widths[:-1], widths[1:]))
    cot = sets * sum(2 * n * nl * b * a for a, b in list(zip(widths[:-1], widths[1:]))[1:])
    gram = sum(2 * n * n * (a + c * b) for a, b in zip(widths[:-1], widths[1:]))
    return dict(forward=fwd, cotangent=cot, gram=gram, total=fwd + cot + gram)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> list[float]:
    """Seconds of several runs of ``fn`` (already warmed up on a small batch): the first
    run counts when it takes over 2 s, and runs stop after 20 s."""
    times = []
    for k in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        elapsed = time.perf_counter() - t
        if k > 0 or elapsed > 2:
            times.append(elapsed)
        if sum(times) > 20:
            break
    return times


def composite(model, x1, x2, mode):
    """The structured formula in eager torch, on the features the structured path uses."""
    plan = _StructuredPlan.of(model)
    cw, cb = plan.coefficients()
    a1, d1 = plan.features(x1)
    a2, d2 = (a1, d1) if x2 is None else plan.features(x2)
    n1, n2, nl = x1.shape[0], (x1 if x2 is None else x2).shape[0], plan.n_out
    out = None
    for A1, D1, A2, D2, w, b in zip(a1, d1, a2, d2, cw, cb):
        ga = torch.mm(A1, A2.t()).mul_(w).add_(b)
        m = D1.shape[2]
        if mode == "trace":
            term = ga.mul_(torch.mm(D1.reshape(n1, nl * m), D2.reshape(n2, nl * m).t()))
        else:
            gd = torch.mm(D1.reshape(n1 * nl, m), D2.reshape(n2 * nl, m).t())
            term = gd.view(n1, nl, n2, nl).permute(0, 2, 1, 3).mul(ga[:, :, None, None])
        out = term if out is None else out.add_(term)
    return out


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


# ---------------------------------------------------------------------------------
# subprocess workers


def worker(spec: dict) -> dict:
    case, device = spec["case"], spec["device"]
    if spec.get("cap_bytes"):
        cap = int(spec["cap_bytes"])
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    model, x, x2 = make_problem(case, device)
    if spec["kind"] == "memory":
        before = rss_bytes("VmRSS")
        try:  # reset the high-water mark so VmHWM covers only the call
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        t = time.perf_counter()
        k = empirical_ntk(model, x, mode=case["mode"], method="structured", progress=False)
        sync(device)
        seconds = time.perf_counter() - t
        peak_dev = torch.cuda.max_memory_allocated() if device == "cuda" else None
        return dict(status="ok", seconds=seconds, rss_before=before, peak_rss=rss_bytes("VmHWM"),
                    peak_device=peak_dev, checksum=float(k.double().sum()))
    method, bounded = spec["method"], spec["bounded"]
    kwargs = dict(mode=case["mode"], method=method, progress=False)
    if bounded:
        kwargs["memory_budget"] = int(spec["cap_bytes"]) // 2
    else:
        kwargs["chunk_size"] = case["n"]
        kwargs["memory_budget"] = 2**62

    def structured():  # timed here too: the ratio then compares runs in the same conditions
        ts = []
        for _ in range(spec["repeats"] + 1):
            t = time.perf_counter()
            empirical_ntk(model, x, x2, mode=case["mode"], method="structured", progress=False)
            sync(device)
            ts.append(time.perf_counter() - t)
        return ts[1:]

    try:
        before = structured()
        empirical_ntk(model, x[:4], None if x2 is None else x2[:4], **kwargs)  # warm-up
        times = timed(lambda: empirical_ntk(model, x, x2, **kwargs), device, spec["repeats"])
        s_times = before + structured()
        seconds, s_seconds = statistics.median(times), statistics.median(s_times)
        return dict(status="ok", seconds=seconds, best=min(times), repeats=len(times),
                    structured_seconds=s_seconds, structured_best=min(s_times),
                    vs_structured=seconds / s_seconds,
                    vs_structured_best=min(times) / min(s_times))
    except (RuntimeError, MemoryError) as error:
        text = str(error)
        oom = "can't allocate memory" in text or "out of memory" in text
        if oom or isinstance(error, MemoryError):
            return dict(status="oom", message=text.splitlines()[-1][:300])
        raise


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", message=f"did not finish within {timeout:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return dict(status="error", message=" | ".join(tail)[:400], returncode=done.returncode)


# ---------------------------------------------------------------------------------
# cases


def load_average() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def wait_for_quiet(args) -> float:
    """Waits (up to --quiet-wait s) for the 1-minute load average to drop below
    --quiet-load (others share this machine); returns the load when it went on."""
    deadline = time.time() + args.quiet_wait
    while load_average() >= args.quiet_load and time.time() < deadline:
        time.sleep(5)
    return load_average()


def run_case(case: dict, args) -> dict:
    device = args.device
    result = dict(case=case, rows=[], load_at_start=wait_for_quiet(args))
    rows = result["rows"]
    cap = int(args.func_cap_gb * 2**30)

    if case.get("memory_only"):
        r = run_worker(dict(kind="memory", case=case, device=device), timeout=args.func_timeout * 5)
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
    times = {key: [] for key in calls}
    for _ in range(args.repeats):
        for key, fn in calls.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - t)
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

    for method in ("jacobian", "ntk_vp"):
        for variant in case.get("func", ()):
            spec = dict(kind="func", case=case, device=device, method=method,
                        bounded=variant == "bounded", cap_bytes=cap, repeats=args.repeats)
            load = wait_for_quiet(args)
            r = run_worker(spec, timeout=args.func_timeout)
            r["load_at_start"] = load
            label = f"{variant}, cap {args.func_cap_gb:g} GB"
            if r["status"] == "ok":
                r["gflops"] = flops(case, False)["total"] / r["seconds"] / 1e9
            rows.append(dict(method=method, variant=label, **r))
    # Time relative to the structured row of the same variant (x2=None for torch.func).
    structured = {r["variant"]: r for r in rows if r["method"] == "structured"}
    for r in rows:
        if r["method"] != "matmul" and r["status"] == "ok" and "vs_structured" not in r:
            base = structured.get(r["variant"], structured.get("x2=None"))
            r["vs_structured"] = r["seconds"] / base["seconds"]
            if "best" in r and "best" in base:
                r["vs_structured_best"] = r["best"] / base["best"]
    return result


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        case = res["case"]
        lines.append(f"\n### {case['name']} (mode {case['mode']}; target: {case['target']}; "
                     f"load average at start {res.get('load_at_start', float('nan')):.2f})\n")
        lines.append("| method | variant | status | seconds (median) | best | × structured "
                     "(median, best) | GFLOP/s | % matmul | note |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            sec = f"{r['seconds']:.4g}" if "seconds" in r else ""
            best = f"{r['best']:.4g}" if "best" in r else ""
            ratio = f"{r['vs_structured']:.3g}" if "vs_structured" in r else ""
            if "vs_structured_best" in r:
                ratio += f", {r['vs_structured_best']:.3g}"
            gf = f"{r['gflops']:.1f}" if "gflops" in r else ""
            frac = f"{100 * r['matmul_fraction']:.0f}%" if "matmul_fraction" in r else ""
            note = r.get("message", "")
            if "peak_rss" in r:
                note = (f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB (before call "
                        f"{r['rss_before'] / 2**30:.2f} GiB)")
            if "max_rel_diff" in r:
                note = f"max rel diff vs structured {r['max_rel_diff']:.1e}"
            lines.append(f"| {r['method']} | {r['variant']} | {r['status']} | {sec} | {best} | "
                         f"{ratio} | {gf} | {frac} | {note} |")
    return "\n".join(lines)


def select_cases(cases: list[dict], spec: str) -> list[dict]:
    """Cases named in the comma-separated ``spec`` (exact names, else substrings)."""
    if not spec:
        return cases
    names = [c["name"] for c in cases]
    wanted = set()
    for token in spec.split(","):
        exact = [n for n in names if n == token]
        wanted.update(exact or [n for n in names if token in n])
    return [c for c in cases if c["name"] in wanted]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument("--cases", default="",
                        help="comma-separated case names (or substrings) to run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--func-cap-gb", type=float, default=10.0,
                        help="memory cap of the torch.func subprocesses (GB)")
    parser.add_argument("--func-timeout", type=float, default=120.0,
                        help="wall-clock limit per torch.func measurement (s)")
    parser.add_argument("--quiet-load", type=float, default=1.5,
                        help="wait for the 1-minute load average to drop below this ...")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="... for at most this many seconds before each measurement")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "empirical_cpu.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    cases = select_cases(QUICK_CASES if args.quick else FULL_CASES, args.cases)
    results = []
    for case in cases:
        print(f"running {case['name']} ...", file=sys.stderr, flush=True)
        results.append(run_case(case, args))
    meta = dict(
        torch=torch.__version__, torch_ntk=torch_ntk.__version__, python=platform.python_version(),
        machine=platform.machine(), processor=platform.processor() or platform.uname().processor,
        threads=torch.get_num_threads(), device=args.device, quick=args.quick,
        date=time.strftime("%Y-%m-%d %H:%M:%S"), command=" ".join(sys.argv),
    )
    if args.cases and os.path.exists(args.json):  # replace those cases, keep the others
        with open(args.json) as f:
            old = json.load(f)
        fresh = {r["case"]["name"] for r in results}
        kept = [r for r in old.get("results", []) if r["case"]["name"] not in fresh]
        order = [c["name"] for c in FULL_CASES + QUICK_CASES]
        results = sorted(kept + results, key=lambda r: order.index(r["case"]["name"])
                         if r["case"]["name"] in order else len(order))
        meta["runs"] = old.get("meta", {}).get("runs", [old.get("meta", {}).get("command")])
    meta.setdefault("runs", [])
    meta["runs"] = [m for m in meta["runs"] if m] + [f"{meta['date']}: {meta['command']}"]
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, results=results), f, indent=1)
    print(markdown(results))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
