"""Shared benchmark machinery: timing with warm-up and medians, peak memory, JSON output.

Timings are wall-clock medians after warm-up (CUDA: events around the call, with
synchronization). Peak memory: on CUDA the allocator's peak; on CPU the growth of the
process's peak resident set, measured in a fresh child process per case so earlier
cases cannot hide it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
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


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _child(setup, conn):
    try:
        fn = setup()
        base = _peak_rss_bytes()
        fn()
        conn.send({"peak_extra_bytes": _peak_rss_bytes() - base})
    except Exception as error:  # reported, not raised: the parent records it
        conn.send({"error": f"{type(error).__name__}: {error}"})


def peak_memory(setup: Callable[[], Callable[[], object]], device: str = "cpu") -> dict:
    """Peak extra memory of one call of ``setup()()`` beyond what setup allocated.

    ``setup`` must be picklable (a module-level function or functools.partial) on CPU.
    """
    if device == "cuda":
        fn = setup()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base}
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(setup, child))
    proc.start()
    result = parent.recv() if parent.poll(600) else {"error": "timed out"}
    proc.join()
    return result


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
