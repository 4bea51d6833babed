"""Scaling of torch_ntk.distributed.tiled_kernel over 1 and 2 torchrun processes.

For each case: one untiled call (analytic_kernels / empirical_ntk) in a single process,
then tiled_kernel into a memory-mapped .npy under ``torchrun --nproc_per_node=P``
(gloo; CUDA: NCCL, one GPU per process) for P = 1, 2. Every process uses
``--threads`` threads (default 1 on CPU), so P processes use P cores.

  tiles/s      tiles computed per second over all ranks (compute phase)
  total_s      tiled_kernel wall time inside the ranks: hashing and agreement check,
               file creation, tiles, flushes, manifests, final rename (median of repeats)
  efficiency   total_s(P=1) / (P · total_s(P)), same output kind
  overhead     median over repeats of total_s(P=1) / untiled_s − 1, the untiled call
               timed in the same P=1 process just before each tiled run: the cost of
               the distributed path itself (tensor output: tiling alone; npy output:
               tiling and writing the .npy with its manifests)
  features     samples whose empirical features the ranks computed, over N (1.0: each
               band's features once; a symmetric run on P ranks needs up to P bands twice)
  write .npy   seconds to fill an N×N .npy memory map with a constant and flush it (P=1,
               interleaved with the runs): the disk's share of the .npy output's cost

The machine's load average (before and after) and CPU are recorded: on a shared machine
the 2-process rows compete with other work.

    python benchmarks/distributed.py [--quick] [--device cpu|cuda] [--repeats R]
Writes benchmarks/results/distributed_<device>.json (atomically) and prints the table
that ``render_distributed(payload)`` makes from it (docs/benchmarks.md holds it between
``<!-- table:distributed -->`` marks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from torch_ntk._utils import files  # noqa: E402
from torch_ntk.bench.common import machine_info, markdown_table, write_json  # noqa: E402

CASES = {
    # name: (kind, widths, N, tile, dtype)
    "analytic_ntk_relu": ("ntk", [16, 1024, 1024, 1024, 1], 20000, 2500, "float32"),
    "empirical_trace": ("empirical", [16, 1024, 1024, 1024, 1], 8000, 1000, "float32"),
}
QUICK = {
    "analytic_ntk_relu": ("ntk", [16, 512, 512, 512, 1], 1500, 300, "float32"),
    "empirical_trace": ("empirical", [16, 256, 256, 1], 800, 200, "float32"),
}


def _model(kind, widths, dtype, device):
    import torch_ntk as tn

    if kind == "empirical":
        torch.manual_seed(0)
        return tn.ntk_mlp(widths, "relu", dtype=dtype, device=device).eval()
    return tn.mlp_spec(widths, "relu")


def _inputs(n, n0, dtype, device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, n0, generator=g, dtype=dtype).to(device)


def worker(case: str, directory: str, repeats: int, device: str, quick: bool,
           sink: str) -> None:
    """Runs under torchrun: times tiled_kernel ``repeats`` times (rank 0 writes JSON)."""
    import torch.distributed as dist

    from torch_ntk.distributed import tiled_kernel

    kind, widths, n, tile, dtype = (QUICK if quick else CASES)[case]
    dtype = getattr(torch, dtype)
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank()
    x = _inputs(n, widths[0], dtype, dev)
    model = _model(kind, widths, dtype, dev)
    untiled_call(kind, model, x[:2 * tile])  # warm-up
    tiled_kernel(model, x[:2 * tile], kind=kind, out=os.path.join(directory, "warm.npy"),
                 tile_size=tile, progress=False, overwrite=True)
    runs = []
    for r in range(repeats):
        out = (os.path.join(directory, f"k{r}.npy") if sink == "npy"
               else torch.empty(n, n, dtype=dtype))
        base = disk = None
        if dist.get_world_size() == 1:  # the untiled call, interleaved: same conditions
            base = untiled_call(kind, model, x)
            if sink == "npy":
                disk = disk_write(os.path.join(directory, "disk.npy"), n, tile, dtype)
        dist.barrier()
        t0 = time.perf_counter()
        stats = tiled_kernel(model, x, kind=kind, out=out, tile_size=tile, progress=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        total = time.perf_counter() - t0
        runs.append({"total_s": total, "compute_s": stats.seconds, "untiled_s": base,
                     "disk_write_s": disk,
                     "tiles": stats.tiles_computed, "per_rank": [len(c) for c in stats.computed],
                     "feature_samples": stats.feature_samples})
        del out
    if rank == 0:
        files.write_json(os.path.join(directory, "result.json"), runs, indent=None)
    dist.destroy_process_group()


def disk_write(path: str, n: int, rows: int, dtype) -> float:
    """Seconds to fill an [n, n] .npy memory map band by band and flush it: the bound on
    what the .npy output can cost over an in-memory tensor."""
    import numpy as np

    t0 = time.perf_counter()
    mm = np.lib.format.open_memmap(path, mode="w+", shape=(n, n),
                                   dtype=np.dtype(str(dtype).replace("torch.", "")))
    for i in range(0, n, rows):
        mm[i:i + rows] = 1.0
    mm.flush()
    del mm
    seconds = time.perf_counter() - t0
    os.remove(path)
    return seconds


def untiled_call(kind, model, x) -> float:
    """Seconds of one untiled call (analytic_kernels / empirical_ntk) on all of x."""
    import torch_ntk as tn

    t0 = time.perf_counter()
    if kind == "empirical":
        tn.empirical_ntk(model, x, mode="trace", progress=False)
    else:
        getattr(tn.analytic_kernels(model, x, get=kind), kind)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(case: str, nproc: int, repeats: int, device: str, quick: bool, threads: int,
           sink: str) -> dict:
    directory = tempfile.mkdtemp(prefix="ntk_dist_bench_")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.abspath(__file__), "--worker", case, directory, "--repeats", str(repeats),
           "--device", device, "--sink", sink] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    launch_s = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        with open(os.path.join(directory, "result.json")) as f:
            runs = json.load(f)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"runs": runs, "launch_wall_s": launch_s,
            "total_s": statistics.median(r["total_s"] for r in runs),
            "compute_s": statistics.median(r["compute_s"] for r in runs),
            "untiled_s": (statistics.median(r["untiled_s"] for r in runs)
                          if runs[0]["untiled_s"] is not None else None),
            "overhead": (statistics.median(r["total_s"] / r["untiled_s"] - 1 for r in runs)
                         if runs[0]["untiled_s"] is not None else None),
            "disk_write_s": (statistics.median(r["disk_write_s"] for r in runs)
                             if runs[0].get("disk_write_s") is not None else None),
            "tiles": runs[0]["tiles"], "per_rank": runs[0]["per_rank"],
            "feature_samples": runs[0].get("feature_samples")}


def rows_of(payload: dict) -> list[dict]:
    """One row per (case, output, processes), the ratios computed from the JSON's medians."""
    rows = []
    for case, res in payload["results"].items():
        tensor1 = res["sinks"].get("tensor", {}).get("1")
        for sink, per in res["sinks"].items():
            t1 = per["1"]["total_s"] if "1" in per else None
            for nproc, r in sorted(per.items(), key=lambda kv: int(kv[0])):
                p = int(nproc)
                feats = r.get("feature_samples")
                rows.append({
                    "case": case, "sink": sink, "N": res["N"], "tile": res["tile"], "procs": p,
                    "tiles": r["tiles"],
                    "untiled_s": f"{r['untiled_s']:.2f}" if r["untiled_s"] else "",
                    "total_s": (f"{r['total_s']:.2f} ({min(u['total_s'] for u in r['runs']):.1f}"
                                f"–{max(u['total_s'] for u in r['runs']):.1f})"),
                    "tiles_per_s": f"{r['tiles'] / r['compute_s']:.2f}",
                    "efficiency": f"{t1 / (p * r['total_s']):.2f}" if t1 else "",
                    "overhead": f"{r['overhead']:+.0%}" if r["overhead"] is not None else "",
                    "npy_vs_tensor": (f"{r['total_s'] / tensor1['total_s'] - 1:+.0%}"
                                      if sink == "npy" and p == 1 and tensor1 else ""),
                    "disk_s": (f"{r['disk_write_s']:.2f}" if r.get("disk_write_s") else ""),
                    "features": (f"{sum(feats) / res['N']:.2f}"
                                 if res["kind"] == "empirical" and feats else ""),
                })
    return rows


COLUMNS = [("case", "case"), ("sink", "output"), ("N", "N"), ("tile", "tile"),
           ("procs", "ranks"), ("tiles", "tiles"), ("untiled_s", "untiled call s"),
           ("total_s", "tiled s (min–max)"), ("tiles_per_s", "tiles/s"), ("efficiency", "efficiency"),
           ("overhead", "overhead vs untiled"), ("npy_vs_tensor", ".npy vs tensor"),
           ("disk_s", "write N×N .npy s"),
           ("features", "features / N")]


def render_distributed(payload: dict) -> str:
    """The markdown table of a distributed_<device>.json payload, with its conditions."""
    m = payload["machine"]
    load = payload.get("loadavg_before", payload.get("loadavg"))
    after = payload.get("loadavg_after")
    cond = (f"{m.get('cpu_model') or 'CPU'}, {m.get('cpu_count')} cores, torch {m['torch']}, "
            f"{payload['threads_per_process']} thread(s) per rank, median of "
            f"{payload['repeats']} runs, {m['date'][:10]}; load average "
            f"{load[0]:.1f} before" + (f", {after[0]:.1f} after" if after else "")
            + (" (under load: other jobs shared the cores)"
               if max(load[0], after[0] if after else 0) > 1.5 else " (a quiet machine)"))
    return "\n\n".join([markdown_table(rows_of(payload), COLUMNS), cond,
                        "\n".join(_summary(payload, load))])


def _summary(payload: dict, load) -> list[str]:
    """The issue's figures of merit from the same JSON, each against its target."""
    spread = max(max(u["total_s"] for u in r["runs"]) / min(u["total_s"] for u in r["runs"])
                 for res in payload["results"].values() for per in res["sinks"].values()
                 for r in per.values())
    out = [f"- Noise: the repeats of one launch differ by up to {spread:.1f}× (max/min tiled "
           "time); the overheads compare each run with the untiled call timed just before it "
           "in the same process, the .npy-vs-tensor column compares separate launches."]
    cores = payload["machine"].get("cpu_count") or 0
    for case, res in payload["results"].items():
        sinks = res["sinks"]
        parts, effs = [], []
        for sink, per in sinks.items():
            if "1" in per and "2" in per:
                eff = per["1"]["total_s"] / (2 * per["2"]["total_s"])
                parts.append(f"{eff:.2f} ({sink} output)")
                effs.append((sink, eff))
        line = f"- {case}: 2-rank efficiency " + ", ".join(parts) + " (target ≥ 0.90: "
        if load[0] > cores:
            line += (f"not meaningful here — the load average {load[0]:.1f} on {cores} cores "
                     "means the two ranks did not have a core each)")
        else:
            verdict = ", ".join(f"{sink} {'met' if eff >= 0.90 else 'missed'}"
                                for sink, eff in effs)
            line += f"{verdict}; measured on a quiet machine)"
        tensor, npy = sinks.get("tensor", {}).get("1"), sinks.get("npy", {}).get("1")
        if tensor and tensor["overhead"] is not None:
            verdict = (("target ≤ +10%: met" if tensor["overhead"] <= 0.10 else
                        "target ≤ +10%: missed") if res["kind"] != "empirical" else
                       "no target for the empirical kind")
            line += (f"; tiling overhead vs one untiled call {tensor['overhead']:+.0%} "
                     f"(tensor output; {verdict})")
        if npy and tensor:
            line += (f"; the .npy output {npy['overhead']:+.0%} over the untiled call "
                     f"({npy['total_s'] / tensor['total_s'] - 1:+.0%} against the tensor "
                     "output's launch)")
            if npy.get("disk_write_s"):
                extra = npy["total_s"] - tensor["total_s"]
                line += (f", {extra:+.1f} s against {npy['disk_write_s']:.1f} s to write and "
                         "flush an N×N .npy alone")
        feats = (tensor or npy or {}).get("feature_samples")
        per2 = (sinks.get("tensor") or sinks.get("npy") or {}).get("2", {})
        if res["kind"] == "empirical" and feats:
            line += (f"; features computed for {sum(feats) / res['N']:.2f}·N samples on 1 rank, "
                     f"{sum(per2.get('feature_samples') or [0]) / res['N']:.2f}·N over 2 ranks "
                     "(each rank's bands once)")
        out.append(line + ".")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", nargs=2, metavar=("CASE", "DIR"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--sink", default="tensor,npy",
                   help="npy: memory-mapped file with manifests; tensor: an in-memory tensor")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
        worker(*args.worker, args.repeats, args.device, args.quick, args.sink)
        return
    torch.set_num_threads(args.threads)
    nprocs = [int(p) for p in args.nprocs.split(",")]
    load_before = os.getloadavg()
    results = {}
    cases = QUICK if args.quick else CASES
    for case in (args.cases.split(",") if args.cases else cases):
        kind, widths, n, tile, dtype = cases[case]
        results[case] = {"kind": kind, "widths": widths, "N": n, "tile": tile, "dtype": dtype,
                         "sinks": {}}
        for sink in args.sink.split(","):
            results[case]["sinks"][sink] = {
                str(nproc): launch(case, nproc, args.repeats, args.device, args.quick,
                                   args.threads, sink) for nproc in nprocs}
            print(f"{case} {sink}: done (load {os.getloadavg()[0]:.1f})", flush=True)
    payload = {"machine": machine_info(args.device), "loadavg_before": load_before,
               "loadavg_after": os.getloadavg(), "threads_per_process": args.threads,
               "repeats": args.repeats, "command": "python benchmarks/distributed.py "
               + " ".join(argv if argv is not None else sys.argv[1:]),
               "results": results}
    out = args.out or os.path.join(HERE, "results", f"distributed_{args.device}.json")
    write_json(out, payload)
    print(render_distributed(payload))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
