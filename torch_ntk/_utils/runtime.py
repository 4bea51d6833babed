"""Run-time plumbing shared by every kernel function: devices, random generators,
progress bars, the working-memory budget and a description of the CPU."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "check_built_for",
    "cpu_info",
    "cuda_devices_of",
    "default_memory_budget",
    "forked_rng",
    "initialized_cuda_devices",
    "progress_bar",
    "resolve_device",
    "seed_all",
    "seeded",
]

# Seconds a run must last before its progress bar appears (progress=None).
PROGRESS_DELAY_S = 2.0


def progress_bar(total: Optional[int] = None, *, progress: Optional[bool] = None, desc: str = "",
                 unit: str = "it", iterable: Optional[Iterable] = None, leave: bool = False,
                 enabled: bool = True):
    """A tqdm bar on stderr, or None when ``progress`` is False or ``enabled`` is False.

    progress: None shows the bar once the run has lasted ``PROGRESS_DELAY_S`` seconds;
    True shows it at once.
    """
    if progress is False or not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                delay=0.0 if progress else PROGRESS_DELAY_S)


def initialized_cuda_devices() -> list[int]:
    """The CUDA devices whose generators exist now (those a seed can reach and a fork restore)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def cuda_devices_of(*objects: Union[None, Tensor, nn.Module]) -> list[int]:
    """Indices of the CUDA devices that hold the given tensors or modules' parameters/buffers."""
    devices = set()
    for obj in objects:
        if isinstance(obj, Tensor):
            devices.add(obj.device)
        elif isinstance(obj, nn.Module):
            devices.update(p.device for p in obj.parameters())
            devices.update(b.device for b in obj.buffers())
    return sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in devices if d.type == "cuda"})


def forked_rng(devices: Optional[list[int]] = None):
    """Fork torch's CPU generator and those of ``devices`` (default: the initialized CUDA
    devices); on exit they are as they were on entry."""
    return torch.random.fork_rng(
        devices=initialized_cuda_devices() if devices is None else devices)


def seed_all(seed: int) -> None:
    """Seed the CPU generator and the initialized CUDA devices' generators.

    Unlike ``torch.manual_seed`` this queues no seed for a CUDA context created later,
    which a fork could not undo.
    """
    torch.default_generator.manual_seed(seed)
    for d in initialized_cuda_devices():
        torch.cuda.default_generators[d].manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators seeded, restoring them after."""
    with forked_rng():
        seed_all(seed)
        yield


def default_memory_budget(device: Union[str, torch.device] = "cpu") -> int:
    """The default working-memory budget in bytes for computations on ``device``.

    CUDA: 80% of the device's free memory (``torch.cuda.mem_get_info``). CPU: half of
    MemAvailable from /proc/meminfo (4 GiB where that file does not exist).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


def check_built_for(function: str, *tensors: Optional[Tensor]) -> None:
    """ValueError when a CUDA tensor reaches a build of torch_ntk without the CUDA ops."""
    from .. import _C

    for t in tensors:
        if t is not None and t.is_cuda and not bool(_C.with_cuda):
            raise ValueError(
                f"{function}: got a CUDA tensor, but this torch_ntk was built without CUDA; "
                "reinstall it with FORCE_CUDA=1 (and CUDA_HOME set) on a machine with the CUDA "
                "toolkit: FORCE_CUDA=1 pip install --no-build-isolation ."
            )


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``torch.device(name)`` for "cpu" or "cuda[:index]"; ValueError otherwise or when it
    is CUDA and no GPU is visible."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]'; got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but torch sees no CUDA GPU "
                         "(torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]'; got {name!r}")
    return device


def cpu_info() -> dict:
    """The CPU's model name (``lscpu``, else /proc/cpuinfo) and whether its flags hold the
    vector extensions the compiled kernels could use: {"cpu_model", "cpu_flags": {avx2,
    avx512f, fma: bool}} (empty where neither source exists)."""
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    if not text and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            text = f.read()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", ""),
            "cpu_flags": {name: name in flags for name in ("avx2", "avx512f", "fma")}}
