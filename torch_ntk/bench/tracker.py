"""Benchmark: the cost of KernelDriftTracker against the training it watches.

    torch-ntk bench tracker [--quick] [--device cpu|cuda] [--out DIR]
    python benchmarks/tracker.py [--quick] [--device cpu|cuda] [--outputs 10 1] [--repeats 7]
                                 [--threads T] [--out PATH]

Model: ntk_mlp([784, 1024, 1024, 1024, n_L], "relu") — width 1024, depth 4 (four dense
layers), float32 — trained by SGD on MSE with 256-sample batches; the tracker watches a
256-point probe set (--quick: width 256, 64 inputs, 64-sample batches and probes, at
most 3 repeats). For each n_L, in the same process:

- train_step_s: median time of one training step (zero_grad, forward, backward, step);
- record_s: median time of one tracker.record() (trace NTK on the probe set by the
  structured path, then the metrics: eigvalsh of a 256×256 matrix, norms, θ movement);
  kernel_s: the empirical_ntk call alone, metrics_s the rest;
- record_over_step: the median of record/step ratios;
- record_lean_s, record_lean_over_step: the same for a tracker with
  ``spectrum_every=K`` (``--spectrum-every``, default 10), timed over K consecutive
  records (one with the eigendecomposition, K − 1 without) and divided by K: the
  amortized cost of a record. Targets (issue 17), for n_L = 1: at most 1.1× a step on
  the CPU, 1.3× on the GPU;
- with ``--projections p`` (default 1) the same for ``KernelDriftTracker(projections=p)``
  at each n_L > p: p cotangents per probe instead of n_L;
- overhead_every_10: the median of (10 steps with the tracker attached at every=10, so
  exactly one record) / (10 steps without it) − 1, and the prediction
  record_s/(10·train_step_s).

Timings are wall-clock after a warm-up (CUDA: synchronized); the two sides of every
ratio are timed back to back, so a shared machine's load affects both alike. Results
are written as JSON (with ``os.getloadavg()`` before and after), atomically, to
benchmarks/results/tracker_<device>.json unless --out is given; :func:`render_tracker`
makes the docs' table from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

import torch_ntk as tn

from .common import machine_info, parse_suite_args, results_dir, summary, sync, write_json

# (width, depth, inputs, batch, probe points)
FULL = (1024, 4, 784, 256, 256)
QUICK = (256, 4, 64, 64, 64)
# Issue 17's targets for record / training step at n_L = 1.
TARGETS = {"cpu": 1.1, "cuda": 1.3}


def _timed(fn, device: str) -> float:
    """Wall-clock seconds of one call, synchronized (a record mixes GPU work and host
    work such as eigvalsh's result copy, so the wall clock is the honest measure)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0



def run_case(n_out: int, device: str, repeats: int, sizes: tuple = FULL,
             projections: int | None = None, spectrum_every: int = 10) -> dict:
    width, depth, n_in, batch, n_probe = sizes
    torch.manual_seed(0)
    widths = [n_in] + [width] * (depth - 1) + [n_out]
    model = tn.ntk_mlp(widths, "relu", device=device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n_in, generator=g).to(device)
    y = torch.randn(batch, n_out, generator=g).to(device)
    probe = torch.randn(n_probe, n_in, generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    def ten_steps():
        for _ in range(10):
            train_step()

    tracker = tn.KernelDriftTracker(model, probe, y[:n_probe], every=10, projections=projections)
    lean = tn.KernelDriftTracker(model, probe, y[:n_probe], every=10, projections=projections,
                                 spectrum_every=spectrum_every)
    info = tn.empirical_ntk(model, probe, mode="trace", return_info=True)[1]
    train_step(), tracker.record(), tracker._kernel()  # warm-up

    def lean_records():  # one with the spectrum, spectrum_every − 1 without
        for _ in range(spectrum_every):
            lean.record()

    # Interleaved, so that both sides of each ratio see the same machine load.
    step_t, record_t, kernel_t, lean_t, ratios, lean_ratios = [], [], [], [], [], []
    for _ in range(repeats):
        step_t.append(_timed(train_step, device))
        record_t.append(_timed(tracker.record, device))
        kernel_t.append(_timed(tracker._kernel, device))
        ratios.append(record_t[-1] / step_t[-1])
        lean_t.append(_timed(lean_records, device) / spectrum_every)
        step_t.append(_timed(train_step, device))
        lean_ratios.append(lean_t[-1] / step_t[-1])
    # every=10: ten steps contain exactly one record whatever the counter's phase.
    plain_t, tracked_t, overheads = [], [], []
    for _ in range(max(3, repeats // 2)):
        plain_t.append(_timed(ten_steps, device))
        tracker.attach(opt)
        tracked_t.append(_timed(ten_steps, device))
        tracker.detach()
        overheads.append(tracked_t[-1] / plain_t[-1] - 1)

    step_s, record_s, kernel_s = (statistics.median(t) for t in (step_t, record_t, kernel_t))
    return {
        "widths": widths, "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch, "probe": n_probe, "n_out": n_out, "projections": projections,
        "kernel_method": info.method,
        "train_step_s": summary(step_t), "record_s": summary(record_t), "kernel_s": summary(kernel_t),
        "metrics_s": max(0.0, record_s - kernel_s),
        "record_over_step": statistics.median(ratios),
        "spectrum_every": spectrum_every, "record_lean_s": summary(lean_t),
        "record_lean_over_step": statistics.median(lean_ratios),
        "target_record_over_step_at_most": TARGETS.get(device) if n_out == 1 else None,
        "overhead_every_10": {
            "plain_10_steps_s": summary(plain_t), "tracked_10_steps_s": summary(tracked_t),
            "measured": statistics.median(overheads),
            "predicted": record_s / (10 * step_s),
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help=f"width {QUICK[0]}, {QUICK[3]}-sample batches and probes (a smoke run)")
    parser.add_argument("--outputs", type=int, nargs="+", default=[10, 1], help="n_L values")
    parser.add_argument("--projections", type=int, nargs="*", default=[1],
                        help="also time KernelDriftTracker(projections=p) for each n_L > p "
                             "(default 1; none to skip)")
    parser.add_argument("--spectrum-every", type=int, default=10,
                        help="the lean tracker's spectrum_every (default 10)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/tracker_<device>.json)")
    return parser


def main(argv=None, *, default_dir: str | None = None,
         prog: str = "python -m torch_ntk.bench.tracker") -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the JSON payload."""
    parser = build_parser()
    args, argv = parse_suite_args(parser, argv, prog)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    load_before = os.getloadavg()
    cases = []
    for n in args.outputs:
        cases.append(run_case(n, args.device, repeats, sizes, spectrum_every=args.spectrum_every))
        cases += [run_case(n, args.device, repeats, sizes, projections=p,
                           spectrum_every=args.spectrum_every)
                  for p in args.projections if p < n]
    payload = {
        "benchmark": "tracker",
        "machine": machine_info(args.device),
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "quick": args.quick,
        "cases": cases,
        "wall_s": round(time.perf_counter() - t0, 1),
        "command": " ".join([prog, *argv]),
    }
    out = args.out or os.path.join(default_dir or results_dir(), f"tracker_{args.device}.json")
    write_json(out, payload)
    for c in cases:
        o = c["overhead_every_10"]
        proj = f", projections={c['projections']}" if c.get("projections") else ""
        print(f"n_L={c['n_out']:>2}{proj} ({c['kernel_method']}): step {c['train_step_s']['median_s'] * 1e3:.1f} ms, "
              f"record {c['record_s']['median_s'] * 1e3:.1f} ms (kernel {c['kernel_s']['median_s'] * 1e3:.1f} ms)"
              f" = {c['record_over_step']:.2f}x a step ({c['record_lean_over_step']:.2f}x with "
              f"spectrum_every={c['spectrum_every']}); every=10 overhead {100 * o['measured']:.1f}% "
              f"(predicted {100 * o['predicted']:.1f}%)")
    print(f"wrote {out}")
    return payload


def render_tracker(payload: dict) -> str:
    """The docs' markdown table of a tracker benchmark payload (one row per case).

    Payloads written before issue 17 (no lean record, no load average) render with
    "not measured" in those places; the target column judges both the default record
    (eigendecomposition every record) and the lean record (``spectrum_every=k``, a
    non-default setting) against :data:`TARGETS` for n_L = 1.
    """
    m = payload["machine"]
    load = (f"load average {payload['loadavg_before'][0]:.1f} before, "
            f"{payload['loadavg_after'][0]:.1f} after" if "loadavg_before" in payload
            else "load not recorded")
    lines = [
        f"`{payload['command']}` — {m.get('gpu') or m.get('cpu_model', m['device'])}, "
        f"{m['torch_threads']} thread(s), torch {m['torch']}, {m['date'][:10]}; {load}"
        f"{' (quick sizes)' if payload['quick'] else ''}.",
        "",
        "| n_L | projections | step ms | record ms (kernel) | record / step "
        "| lean record / step (spectrum every k) | target (n_L = 1) | every=10 overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in payload["cases"]:
        lean = c.get("record_lean_over_step")
        lean_cell = "not measured" if lean is None else f"{lean:.2f}× (k = {c['spectrum_every']})"
        target = TARGETS.get(m["device"]) if c["n_out"] == 1 else None
        def judge(value):
            return "met" if value <= target else "missed"
        verdict = "—" if target is None else (
            f"≤ {target}: default {judge(c['record_over_step'])}"
            + ("" if lean is None else f", lean (k = {c['spectrum_every']}) {judge(lean)}"))
        lines.append(
            f"| {c['n_out']} | {c.get('projections') or '—'} | {c['train_step_s']['median_s'] * 1e3:.1f} "
            f"| {c['record_s']['median_s'] * 1e3:.1f} ({c['kernel_s']['median_s'] * 1e3:.1f}) "
            f"| {c['record_over_step']:.2f}× | {lean_cell} | {verdict} "
            f"| {100 * c['overhead_every_10']['measured']:.0f}% |")
    return "\n".join(lines) + "\n"
