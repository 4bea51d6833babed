"""Files: output that never leaves a partial file (atomic text/binary writes, JSON, .npy)
and input matrices read from .npy, .npz, .csv or .pt, with errors that name the
argument, the file and what was expected."""

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

INPUT_SUFFIXES = (".npy", ".npz", ".csv", ".pt")

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def _temporary_beside(path: PathLike) -> Iterator[str]:
    """A fresh temporary file name in ``path``'s folder, renamed over ``path`` when the
    block completes and removed when it raises (Ctrl-C included, and SIGTERM/SIGHUP under
    the ``torch-ntk`` command, which turns them into the same exception)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
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


_WANTED = {2: "a 2-D array [N, n0]", 3: "images [N, C, L]", 4: "images [N, C, H, W]"}

_LOOKS_LIKE = {
    "empty": "an empty file (0 bytes)",
    "npy": "a .npy array file, as numpy.save writes",
    "npz": "an .npz archive, as numpy.savez writes",
    "torch": "a torch.save file",
    "pickle": "a Python pickle",
    "zip": "a zip archive",
    "text": "text (CSV or similar)",
    "binary": "binary data of an unknown format",
}

_SUFFIX_OF = {"npy": ".npy", "npz": ".npz", "torch": ".pt", "pickle": ".pt", "text": ".csv"}


def sniff(path: str) -> str:
    """What the file at ``path`` is by its first bytes, whatever its name: "empty", "npy",
    "npz", "torch", "pickle", "zip", "text" or "binary"."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "zip"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not just a character cut at the end of the block
            return "binary"
        text = head[:error.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return "text" if printable >= 0.95 * max(1, len(text)) else "binary"


def _wanted(dims: tuple) -> str:
    return " or ".join(_WANTED[d] for d in dims)


def _not_a(argument, path, fmt, kind, dims, writer) -> ValueError:
    """'argument input: a.npy is not a .npy array file (it looks like text …); expected …'."""
    hint = ""
    if kind in _SUFFIX_OF and _SUFFIX_OF[kind] != os.path.splitext(path)[1].lower():
        hint = f"; if that is what it is, name it {_SUFFIX_OF[kind]}"
    return ValueError(f"argument {argument}: {path!r} is not {fmt} (it looks like "
                      f"{_LOOKS_LIKE[kind]}); expected {_wanted(dims)} saved by {writer}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: str, argument: str, header: Optional[bool], index_col: Optional[bool]):
    """A 2-d float64 array from a comma-separated text file. ``header``/``index_col``:
    True (the first line / column is a header / a row index: skipped), False (data), None
    (detect: a non-numeric first line is a header; a first line 0,1,…,m−1 (pandas'
    default column names) or a first column 0,1,…,N−1 (or 1,…,N) or under an empty /
    "Unnamed: 0" header field (pandas' or R's row index) is refused with the flag that
    decides). Quoted fields ("1", as R's write.csv writes) are read."""
    import csv

    import numpy as np

    with open(path, newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f), None)
    if not first:
        raise ValueError(f"argument {argument}: {path!r} is empty: expected rows of "
                         "comma-separated numbers")
    first = [field.strip() for field in first]
    numeric = all(_is_number(v) for v in first)
    if header is None:
        if not numeric:
            header = True
        elif len(first) > 1 and all(v == str(i) for i, v in enumerate(first)):
            raise ValueError(
                f"argument {argument}: the first line of {path!r} is 0,1,…,{len(first) - 1}: "
                "the column names pandas writes for a DataFrame built from an array, or a row "
                "of data? Pass --csv-header yes to skip it or --csv-header no to read it as "
                "data (or write the file with df.to_csv(path, header=False))")
        else:
            header = False
    try:
        data = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1 if header else 0,
                          dtype=np.float64, encoding="utf-8-sig", quotechar='"')
    except ValueError as error:  # numpy's message names the row (counted after the header)
        why = str(error).split("; use `usecols`")[0]
        raise ValueError(f"argument {argument}: cannot read {path!r} as comma-separated "
                         f"numbers{' after its header line' if header else ''}: {why}") from None
    if data.size == 0:
        raise ValueError(f"argument {argument}: {path!r} has no rows of data")
    if index_col is None:
        marker = header and first[0] in ("", "Unnamed: 0", "index")
        rows = np.arange(data.shape[0])
        counts = data.shape[0] > 1 and (np.array_equal(data[:, 0], rows)
                                        or np.array_equal(data[:, 0], rows + 1))
        if data.shape[1] > 1 and (marker or counts):
            why = (f"its header's first field is {first[0]!r}, as pandas' df.to_csv and R's "
                   "write.csv write over a row index" if marker else
                   f"it counts the rows, {data[0, 0]:g}, {data[1, 0]:g}, …, {data[-1, 0]:g}, "
                   "like the row index pandas' df.to_csv writes")
            raise ValueError(
                f"argument {argument}: the first column of {path!r} looks like a row index, "
                f"not a feature ({why}): pass --csv-index-col "
                "yes to drop it or --csv-index-col no to keep it as a feature (or write the "
                "file with df.to_csv(path, index=False))")
    elif index_col:
        if data.shape[1] < 2:
            raise ValueError(f"argument {argument}: --csv-index-col yes drops the first column, "
                             f"but {path!r} has only one")
        data = data[:, 1:]
    return data


def load_inputs(path: str, argument: str, dtype, dims: tuple = (2,),
                csv_header: Optional[bool] = None,
                csv_index_col: Optional[bool] = None) -> Tensor:
    """A float tensor from a .npy, .npz (one array), .csv (comma-separated; a header line
    and pandas' index column handled as :func:`_read_csv` says, with ``csv_header`` /
    ``csv_index_col``) or .pt (a tensor) file, of one of the ranks ``dims`` (default 2:
    [N, n0]; (3, 4): images [N, C, L] or [N, C, H, W]).

    ValueError naming ``argument``, the file and what was expected when the file is
    missing, a folder, empty, of another format than its name says (a text file named
    .npy, an .npz renamed .npy, ...), or holds no such array."""
    import numpy as np

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"argument {argument}: expected a {', '.join(INPUT_SUFFIXES)} file "
                         f"holding {_wanted(dims)}; got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"argument {argument}: {path!r} is a folder; expected a {suffix} file "
                         f"holding {_wanted(dims)}")
    if not os.path.isfile(path):
        raise ValueError(f"argument {argument}: no such file: {path!r}")
    try:
        kind = sniff(path)
    except OSError as error:
        raise ValueError(f"argument {argument}: cannot read {path!r}: "
                         f"{error.strerror or error}") from None
    if kind == "empty":
        raise ValueError(f"argument {argument}: {path!r} is empty (0 bytes); expected "
                         f"{_wanted(dims)}")
    try:
        if suffix == ".npy":
            if kind != "npy":
                raise _not_a(argument, path, "a .npy array file", kind, dims, "numpy.save")
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            if kind != "npz":
                raise _not_a(argument, path, "an .npz archive", kind, dims, "numpy.savez")
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if len(names) != 1:
                    raise ValueError(
                        f"argument {argument}: {path!r} holds {len(names)} arrays "
                        f"({', '.join(names) or 'none'}); expected one, {_wanted(dims)}: save "
                        "the inputs alone (numpy.save to a .npy, or numpy.savez(path, x=x))")
                array = archive[names[0]]
        elif suffix == ".csv":
            if kind != "text":
                raise _not_a(argument, path, "a comma-separated text file", kind, dims,
                             "numpy.savetxt(path, x, delimiter=',') or df.to_csv(path, "
                             "index=False)")
            array = _read_csv(path, argument, csv_header, csv_index_col)
        else:
            if kind not in ("torch", "pickle"):
                raise _not_a(argument, path, "a torch.save file", kind, dims, "torch.save")
            try:
                array = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # weights_only refuses other objects; say it briefly
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise ValueError(
                    f"argument {argument}: cannot read {path!r} with torch.load("
                    f"weights_only=True), which loads tensors only: {type(error).__name__}: "
                    f"{first}; expected {_wanted(dims)} saved by torch.save(x, path)") from None
            if not isinstance(array, torch.Tensor):
                what = type(array).__name__
                if isinstance(array, dict):
                    keys = ", ".join(repr(k) for k in list(array)[:5])
                    what += f" (keys {keys}{', …' if len(array) > 5 else ''})"
                raise ValueError(f"argument {argument}: {path!r} holds a {what}, not a tensor; "
                                 f"expected {_wanted(dims)} saved by torch.save(x, path)")
    except ValueError as error:
        text = str(error)
        if text.startswith(f"argument {argument}:"):
            raise
        if "allow_pickle" in text or "Object arrays" in text:
            text = ("it holds Python objects (an object array), not numbers; save a numeric "
                    "array, e.g. numpy.save(path, x.astype(float))")
        raise ValueError(f"argument {argument}: cannot read {path!r}: {text}") from None
    except Exception as error:  # numpy/torch raise many kinds; all mean "cannot read it"
        raise ValueError(f"argument {argument}: cannot read {path!r}: "
                         f"{type(error).__name__}: {error}") from None
    if isinstance(array, np.ndarray) and array.dtype.kind not in "biuf":
        raise ValueError(f"argument {argument}: {path!r} holds {array.dtype} values; expected "
                         f"numbers, {_wanted(dims)}")
    x = torch.as_tensor(array)
    if x.dim() not in dims:
        raise ValueError(f"argument {argument}: expected {_wanted(dims)}; {path!r} has shape "
                         f"{list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"argument {argument}: {path!r} has no rows")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                 torch.uint8, torch.bool)):
        raise ValueError(f"argument {argument}: expected numbers; {path!r} holds {x.dtype}")
    x = x.to(dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"argument {argument}: {path!r} contains NaN or Inf")
    return x
