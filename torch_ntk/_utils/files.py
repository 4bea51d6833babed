"""Files: output that never leaves a partial file (atomic text/binary writes, JSON, .npy)
and input matrices read from .npy, .csv or .pt."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import Tensor

__all__ = ["INPUT_SUFFIXES", "atomic_npy", "atomic_write", "jsonable", "load_inputs", "read_json",
           "write_json"]

INPUT_SUFFIXES = (".npy", ".csv", ".pt")

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def _temporary_beside(path: PathLike) -> Iterator[str]:
    """A fresh temporary file name in ``path``'s folder, renamed over ``path`` when the
    block completes and removed when it raises (Ctrl-C included)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it
    over ``path``: readers see the old file or the complete new one, never a partial one.

    ``binary=False`` opens the file as text with ``newline=""`` (csv-friendly).
    """
    with _temporary_beside(path) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_npy(path: PathLike, shape: tuple, dtype: torch.dtype,
               fill: Callable[[Tensor], None]) -> None:
    """Create a .npy of ``shape``/``dtype`` at ``path`` through ``fill(tensor)``, where the
    tensor views a memory map of a temporary file (so outputs larger than memory work);
    the file appears under its name only once ``fill`` has returned."""
    import numpy as np

    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    with _temporary_beside(path) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=tuple(shape))
        fill(torch.from_numpy(mm))
        mm.flush()
        del mm


def jsonable(value: Any) -> Any:
    """``value`` with tensors, numpy values and dataclasses as lists/dicts, inf/nan as None."""
    if isinstance(value, Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    return value


def write_json(path: PathLike, payload: Any, indent: Optional[int] = 1) -> None:
    """Atomically write ``payload`` as JSON (through :func:`jsonable`), ending in a newline."""
    text = json.dumps(jsonable(payload), indent=indent, allow_nan=False)
    atomic_write(path, lambda f: f.write(text + "\n"))


def read_json(path: PathLike) -> Optional[dict]:
    """The JSON at ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_inputs(path: str, argument: str, dtype, dims: tuple = (2,)) -> Tensor:
    """A 2-d float tensor from a .npy, .csv (comma-separated, optional header row) or .pt
    file (with ``dims``, e.g. (3, 4): an array of one of those ranks, such as images
    [N, C, L] or [N, C, H, W]). ValueError naming ``argument`` when the file is missing
    or unreadable."""
    import numpy as np

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"argument {argument}: expected a {', '.join(INPUT_SUFFIXES)} file; "
                         f"got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"argument {argument}: no such file: {path!r}")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            try:
                array = np.loadtxt(path, delimiter=",", ndmin=2)
            except ValueError:
                array = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)  # a header row
        else:
            array = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(array, torch.Tensor):
                raise ValueError(f"the file holds a {type(array).__name__}, not a tensor")
    except Exception as error:  # numpy/torch raise many kinds; all mean "cannot read it"
        raise ValueError(f"argument {argument}: cannot read {path!r}: {error}") from None
    x = torch.as_tensor(array)
    if x.dim() not in dims:
        wanted = {2: "a 2-d array [N, n0]", 3: "images [N, C, L]", 4: "images [N, C, H, W]"}
        raise ValueError(f"argument {argument}: expected {' or '.join(wanted[d] for d in dims)}; "
                         f"{path!r} has shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"argument {argument}: {path!r} has no rows")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                 torch.uint8, torch.bool)):
        raise ValueError(f"argument {argument}: expected numbers; {path!r} holds {x.dtype}")
    x = x.to(dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"argument {argument}: {path!r} contains NaN or Inf")
    return x
