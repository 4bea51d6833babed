"""Shared benchmark machinery: timing with warm-up and medians, peak memory, JSON output.

Timings are wall-clock medians after warm-up (CUDA: events around the call, with
synchronization). Peak memory: on CUDA the allocator's peak; on CPU the growth of the
peak resident set (VmHWM, reset before the call) over the resident set before it, in a
fresh child process per case so memory cached by earlier cases cannot hide it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Callable

import torch


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Median and spread of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(setup, conn):
    try:
        fn = setup()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        base = _rss_bytes("VmRSS")
        fn()
        conn.send({"peak_extra_bytes": _rss_bytes("VmHWM") - base})
    except Exception as error:  # reported, not raised: the parent records it
        conn.send({"error": f"{type(error).__name__}: {error}"})


def peak_memory(setup: Callable[[], Callable[[], object]], device: str = "cpu") -> dict:
    """Peak extra memory of one call of ``setup()()`` beyond what setup allocated.

    ``setup`` must be picklable (a module-level function or functools.partial) on CPU,
    where it runs in a fresh child process.
    """
    if device == "cuda":
        fn = setup()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base}
    # spawn, not fork: a forked child of a process whose OpenMP pool has run deadlocks.
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(setup, child))
    proc.start()
    result = parent.recv() if parent.poll(600) else {"error": "timed out"}
    proc.join()
    return result


def roofline(device: str = "cpu", n_matmul: int = 2048, copy_mb: int = 256) -> dict:
    """The two ceilings measured in this run: a float32 n³ matmul's FLOP/s and the
    bandwidth of a large same-device copy (bytes read + bytes written per second)."""
    a = torch.randn(n_matmul, n_matmul, device=device)
    b = torch.randn(n_matmul, n_matmul, device=device)
    t_mm = time_call(lambda: torch.mm(a, b), repeats=5, device=device)["median_s"]
    src = torch.randn(copy_mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    t_copy = time_call(lambda: dst.copy_(src), repeats=5, device=device)["median_s"]
    return {"matmul_n": n_matmul, "matmul_flops": 2 * n_matmul**3 / t_mm,
            "copy_bytes_per_s": 2 * src.numel() * 4 / t_copy}


def machine_info(device: str = "cpu") -> dict:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: str, payload: dict) -> None:
    """Write atomically: a reader never sees a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, sep, *body])
