"""Benchmark: the cost of KernelDriftTracker against the training it watches.

    python benchmarks/tracker.py [--device cpu|cuda] [--outputs 10 1] [--repeats 5] [--out PATH]

Model: ntk_mlp([784, 1024, 1024, 1024, n_L], "relu") — width 1024, depth 4 (four dense
layers), float32 — trained by SGD on MSE with 256-sample batches; the tracker watches a
256-point probe set. For each n_L, in the same process:

- train_step_s: median time of one training step (zero_grad, forward, backward, step);
- record_s: median time of one tracker.record() (trace NTK on the probe set by the
  structured path, then the metrics: eigvalsh of a 256×256 matrix, norms, θ movement);
  kernel_s: the empirical_ntk call alone, metrics_s the rest;
- record_over_step: record_s / train_step_s (target: at most 2);
- overhead_every_10: measured (time of `steps` steps with the tracker attached at
  every=10) / (the same steps without it) − 1, and the prediction record_s/(10·train_step_s).

Timings are wall-clock medians after a warm-up (CUDA: synchronized). Results are written
as JSON, atomically, to benchmarks/results/tracker_<device>.json unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_ntk as tn  # noqa: E402

WIDTH, DEPTH, N_IN, BATCH, PROBE = 1024, 4, 784, 256, 256


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: str, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def write_json(path: str, payload: dict) -> None:
    """Atomic: a temporary file beside ``path``, then os.replace."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_case(n_out: int, device: str, repeats: int, steps: int) -> dict:
    torch.manual_seed(0)
    widths = [N_IN] + [WIDTH] * (DEPTH - 1) + [n_out]
    model = tn.ntk_mlp(widths, "relu", device=device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, N_IN, generator=g).to(device)
    y = torch.randn(BATCH, n_out, generator=g).to(device)
    probe = torch.randn(PROBE, N_IN, generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    tracker = tn.KernelDriftTracker(model, probe, y[:PROBE] if BATCH >= PROBE else None, every=10)
    step_t = median_time(train_step, device, repeats)
    record_t = median_time(tracker.record, device, repeats)
    kernel_t = median_time(lambda: tracker._kernel(), device, repeats)
    info = tn.empirical_ntk(model, probe, mode="trace", return_info=True)[1]

    def loop():
        for _ in range(steps):
            train_step()

    plain = median_time(loop, device, max(2, repeats // 2))
    tracker.attach(opt)
    tracked = median_time(loop, device, max(2, repeats // 2))
    tracker.detach()
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "widths": widths, "parameters": n_params, "batch": BATCH, "probe": PROBE, "n_out": n_out,
        "kernel_method": info.method,
        "train_step_s": step_t, "record_s": record_t, "kernel_s": kernel_t,
        "metrics_s": max(0.0, record_t["median_s"] - kernel_t["median_s"]),
        "record_over_step": record_t["median_s"] / step_t["median_s"],
        "target_record_over_step_at_most": 2.0,
        "overhead_every_10": {
            "steps": steps,
            "plain_s": plain["median_s"], "tracked_s": tracked["median_s"],
            "measured": tracked["median_s"] / plain["median_s"] - 1,
            "predicted": record_t["median_s"] / (10 * step_t["median_s"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--outputs", type=int, nargs="+", default=[10, 1], help="n_L values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="steps timed for the every=10 overhead")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cases = [run_case(n, args.device, args.repeats, args.steps) for n in args.outputs]
    payload = {
        "benchmark": "tracker",
        "machine": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": args.device,
            **({"gpu": torch.cuda.get_device_name()} if args.device == "cuda" else {}),
        },
        "cases": cases,
    }
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"tracker_{args.device}.json")
    write_json(out, payload)
    for c in cases:
        o = c["overhead_every_10"]
        print(f"n_L={c['n_out']:>2} ({c['kernel_method']}): step {c['train_step_s']['median_s'] * 1e3:.1f} ms, "
              f"record {c['record_s']['median_s'] * 1e3:.1f} ms (kernel {c['kernel_s']['median_s'] * 1e3:.1f} ms)"
              f" = {c['record_over_step']:.2f}x a step; every=10 overhead {100 * o['measured']:.1f}% "
              f"(predicted {100 * o['predicted']:.1f}%)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
