"""Shared benchmark machinery: timing with warm-up and medians, peak memory, JSON output.

Timings are medians after warm-up: on CUDA measured by CUDA events recorded around the
call (``torch.cuda.Event``), on CPU by the wall clock. Peak memory: on CUDA the caching
allocator's peak (``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``)
beyond what was allocated before the call; on CPU the growth of the peak resident set
(VmHWM, reset before the call) over the resident set before it, in a fresh child process
per case so memory cached by earlier cases cannot hide it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Iterator, Optional

import torch

from .._utils.files import atomic_write
from .._utils.runtime import cpu_info

__all__ = [
    "sync", "elapsed", "time_call", "interleaved", "summary", "cuda_peak", "peak_memory",
    "matmul_rate", "roofline", "machine_info", "write_json", "markdown_table",
    "results_dir", "float32_matmul", "parse_suite_args", "rss_bytes", "short", "is_oom",
    "load_average", "wait_for_quiet", "symmetry_factor", "keep_runs", "across_runs",
    "median_range", "runs_line",
]


def parse_suite_args(parser, argv: Optional[list], prog: str):
    """A suite's command line: ``argv`` (sys.argv[1:] when None) parsed by ``parser``
    under the name ``prog``. ``--device cuda`` without a visible GPU is an argument error
    (exit 2), except for subprocess workers (``--worker``). Returns (args, argv)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser.prog = prog
    args = parser.parse_args(argv)
    if (getattr(args, "device", "cpu") == "cuda" and not getattr(args, "worker", None)
            and not torch.cuda.is_available()):
        parser.error("argument --device: CUDA is not available on this machine")
    return args, argv


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def elapsed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds of one call of ``fn``: CUDA events around it on CUDA, the wall clock on CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times)}


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Median and spread of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return summary([elapsed(fn, device) for _ in range(repeats)])


def interleaved(calls: dict, repeats: int, device: str) -> dict:
    """Times of each call in ``calls`` (already warmed up), round after round: a busy
    machine or a GPU clock change slows them alike. Returns {key: [seconds, ...]}."""
    times: dict = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            times[key].append(elapsed(fn, device))
    return times


def cuda_peak(fn: Callable[[], object]) -> int:
    """Peak CUDA memory (bytes) allocated by one call of ``fn`` beyond what was allocated
    before it; the result is freed before the peak is read back, so it counts too."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def rss_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in bytes."""
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
        base = rss_bytes("VmRSS")
        fn()
        conn.send({"peak_extra_bytes": rss_bytes("VmHWM") - base})
    except Exception as error:  # reported, not raised: the parent records it
        conn.send({"error": f"{type(error).__name__}: {error}"})


def peak_memory(setup: Callable[[], Callable[[], object]], device: str = "cpu") -> dict:
    """Peak extra memory of one call of ``setup()()`` beyond what setup allocated.

    ``setup`` must be picklable (a module-level function or functools.partial) on CPU,
    where it runs in a fresh child process.
    """
    if device == "cuda":
        fn = setup()
        return {"peak_extra_bytes": cuda_peak(fn)}
    # spawn, not fork: a forked child of a process whose OpenMP pool has run deadlocks.
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(setup, child))
    proc.start()
    result = parent.recv() if parent.poll(600) else {"error": "timed out"}
    proc.join()
    return result


@contextlib.contextmanager
def float32_matmul(precision: str) -> Iterator[None]:
    """torch.set_float32_matmul_precision for the block ("high" lets CUDA use TF32)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def matmul_rate(n: int, device: str, kind: str = "float32", repeats: int = 5) -> dict:
    """FLOP/s of an n×n×n product: kind "float32" (no TF32), "tf32" (float32 inputs,
    TF32 tensor cores) or "bfloat16" (bf16 inputs, float32 accumulation)."""
    dtype = torch.bfloat16 if kind == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with float32_matmul("high" if kind == "tf32" else "highest"):
        timing = time_call(lambda: torch.mm(a, b), repeats=repeats, warmup=2, device=device)
    return {"n": n, "kind": kind, "seconds": timing["median_s"],
            "flops": 2 * n**3 / timing["median_s"]}


def roofline(device: str = "cpu", n_matmul: Optional[int] = None,
             copy_mb: Optional[int] = None) -> dict:
    """The two ceilings measured in this run: a float32 n³ matmul's FLOP/s (no TF32) and
    the bandwidth of a large same-device copy (bytes read + bytes written per second)."""
    n_matmul = n_matmul or (8192 if device == "cuda" else 2048)
    copy_mb = copy_mb or (2048 if device == "cuda" else 256)
    mm = matmul_rate(n_matmul, device)
    src = torch.randn(copy_mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    t_copy = time_call(lambda: dst.copy_(src), repeats=5, device=device)["median_s"]
    return {"matmul_n": n_matmul, "matmul_flops": mm["flops"],
            "copy_bytes_per_s": 2 * src.numel() * 4 / t_copy}


def _compiler() -> str:
    """The first line of ``$CXX --version`` (c++ by default: what builds torch_ntk._C)."""
    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


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
    info.update(cpu_info())
    info["compiler"] = _compiler()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_line(machine: dict) -> str:
    """One line naming the machine of a payload: CPU model and vector flags, cores,
    threads, torch, date (UTC) — the line under a rendered table."""
    flags = ", ".join(k for k, v in machine.get("cpu_flags", {}).items() if v)
    return (f"{machine.get('cpu_model', '?')} ({flags}), {machine['cpu_count']} cores, "
            f"{machine['torch_threads']} threads, torch {machine['torch']}, "
            f"{machine['date'][:16].replace('T', ' ')} UTC")


def results_dir() -> str:
    """benchmarks/results of a source checkout (the scripts' default output folder), or
    ./benchmark_results when torch_ntk is installed elsewhere."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isdir(os.path.join(root, "benchmarks")):
        return os.path.join(root, "benchmarks", "results")
    return os.path.abspath("benchmark_results")


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` as JSON (indent 1; non-finite floats as NaN/Infinity, as
    :func:`json.dump` writes them) atomically: a reader never sees a half-written file."""
    atomic_write(path, lambda f: json.dump(payload, f, indent=1))


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def short(error: BaseException) -> str:
    """``error`` in one line of at most 300 characters."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` says the process ran out of (host or device) memory."""
    text = str(error)
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in text or "out of memory" in text)


def load_average() -> float:
    """The 1-minute load average (nan where /proc/loadavg is missing)."""
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


# ---------------------------------------------------------------------------------------
# fairness: the pair work of x2 = None, and every run kept


def symmetry_factor(n: int) -> float:
    """N² / (N(N+1)/2) = 2N/(N+1): how much more pair work a baseline computing the full
    square does than an op computing one triangle for x2 = None (→ 2 for large N)."""
    return 2 * n / (n + 1)


def keep_runs(path: str, payload: dict, same: tuple = ("benchmark", "quick")) -> dict:
    """``payload`` with ``payload["runs"]``: every earlier run recorded in the JSON at
    ``path`` (its own ``runs``, or the file itself as one run) when it is the same
    benchmark (the keys ``same`` and the device agree), then this one. A run is
    {"date", "load", "wall_s", "rows"}; renderers show the median and range over them."""
    def as_run(p: dict) -> dict:
        machine = p.get("machine", {})
        load = p.get("load_before", p.get("load_end"))
        if isinstance(load, list):
            load = load[0]
        return {"date": machine.get("date", "?"), "load": load, "wall_s": p.get("wall_s"),
                "rows": p.get("rows", [])}

    runs = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        # a key missing from an older file (written before it was recorded) agrees
        # the same machine: a median over runs of different CPUs would mix machines
        agree = all(old.get(k, payload.get(k)) == payload.get(k) for k in same) and all(
            old.get("machine", {}).get(k) == payload.get("machine", {}).get(k)
            for k in ("device", "cpu_model"))
        if agree:
            runs = old.get("runs") or [as_run(old)]
    payload["runs"] = runs + [as_run(payload)]
    return payload


def across_runs(payload: dict, row: dict, key: str, match: tuple) -> list:
    """The numeric values of ``key`` in the rows of every run of ``payload`` that agree
    with ``row`` on the fields ``match`` (just ``row[key]`` when the payload keeps no
    runs, as JSON written before runs were kept)."""
    runs = payload.get("runs") or [{"rows": [row]}]
    values = []
    for run in runs:
        for other in run.get("rows", []):
            if all(_matchable(other.get(m)) == _matchable(row.get(m)) for m in match):
                value = other.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.append(value)
    return values


def _matchable(value):
    """Rows written before the x2 column existed hold x2 = None, the renderers "None"."""
    return "None" if value is None else value


def median_range(values: list, fmt: str = ".3g") -> str:
    """"m" for one value, "m (lo–hi, n=k)" for several: the median and range."""
    if not values:
        return ""
    if len(values) == 1:
        return format(values[0], fmt) if fmt else str(values[0])
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}}, "
            f"n={len(values)})")


def runs_line(payload: dict) -> str:
    """One line listing the runs a rendered table summarizes: n, and each run's date and
    load average (n=1 for JSON written before runs were kept)."""
    runs = payload.get("runs")
    if not runs:
        return "Runs: n=1 (medians and ranges appear when the suite is rerun into this file)."
    parts = []
    for run in runs:
        load = run.get("load")
        parts.append(f"{str(run.get('date', '?'))[:16].replace('T', ' ')}"
                     + (f" (load {load:.1f})" if isinstance(load, (int, float)) else ""))
    return (f"Runs: n={len(runs)} — {'; '.join(parts)}. Cells with several runs show the "
            f"median (min–max, n).")
