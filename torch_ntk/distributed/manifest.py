"""The tiled kernel's manifests: which tiles are done, and whether the files on disk are
this very computation's (fingerprints of the inputs, network, settings and version; a
finished result's size, mtime and checksum).

``<out>.manifest.json`` is rank 0's merged record, ``<out>.manifest.rank<r>.json`` each
rank's tiles finished since. ``prepare`` decides, before any tile runs, whether to resume,
start over or refuse (``OutputConflict``); ``finish`` records the result, then renames the
partial file to ``out``.
"""

from __future__ import annotations

import glob
import hashlib
import os
from typing import Optional

import numpy as np

from .._utils.files import read_json, write_json

MANIFEST_FORMAT = "torch_ntk.distributed.kernel/2"  # /2: "parts", "result" (size, mtime, sha256)
HASH_LIMIT = 256 * 2**20  # results up to this size are checksummed (sha256) in the manifest


class OutputConflict(ValueError):
    """``out`` (or its partial run) exists and is not known to be this computation's; the
    message says why. Pass ``overwrite=True`` (``--overwrite``) to replace it."""

def rank_manifests(out: str) -> list[str]:
    return sorted(glob.glob(glob.escape(out) + ".manifest.rank*.json"))


def recorded_tiles(out: str) -> Optional[tuple[int, int]]:
    """(tiles recorded as finished, tiles in the grid) of the run whose manifest is
    ``<out>.manifest.json`` — what a rerun would resume from — or None without one."""
    m = read_json(os.fspath(out) + ".manifest.json")
    if not m or "fingerprint" not in m or "tiles_total" not in m:
        return None
    return len(collect_done(os.fspath(out), m["fingerprint"])), int(m["tiles_total"])


def collect_done(out: str, digest: str) -> set[int]:
    """Tile ids recorded as finished for computation ``digest`` (merged + rank files)."""
    done: set[int] = set()
    for path in [out + ".manifest.json", *rank_manifests(out)]:
        m = read_json(path)
        if m and m.get("fingerprint") == digest:
            done.update(int(t) for t in m.get("done", ()))
    return done


def manifest_payload(prints, grid, settings, done, complete, data_file, result=None) -> dict:
    return {"format": MANIFEST_FORMAT, "fingerprint": prints["all"], "parts": prints,
            "settings": settings, "tiles_total": len(grid), "done": sorted(done),
            "complete": complete, "data": os.path.basename(data_file), "result": result}


def result_identity(path: str) -> dict:
    """What the manifest records of a finished result: size, mtime and (up to
    HASH_LIMIT bytes) the sha256 of its bytes."""
    st = os.stat(path)
    digest = None
    if st.st_size <= HASH_LIMIT:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def result_changed(path: str, old: dict) -> Optional[str]:
    """None when ``path`` is the result ``old`` (a manifest) recorded, else how it differs."""
    recorded = old.get("result")
    if not isinstance(recorded, dict) or "size" not in recorded:
        return (f"{os.path.basename(path)} has no recorded size or checksum (a manifest of an "
                "older torch_ntk), so it cannot be verified")
    size = os.path.getsize(path)
    if size != recorded["size"]:
        return (f"{os.path.basename(path)} is {size} bytes, the finished result was "
                f"{recorded['size']}")
    if recorded.get("sha256"):
        if result_identity(path)["sha256"] != recorded["sha256"]:
            return f"{os.path.basename(path)}'s content differs from the recorded checksum"
        return None
    if os.stat(path).st_mtime_ns != recorded.get("mtime_ns"):
        return f"{os.path.basename(path)} was modified after the run finished"
    return None


def differs(old: dict, prints: dict, settings: dict) -> str:
    """What differs between a manifest's computation and this one, in words."""
    parts = old.get("parts") or {}
    what = []
    for key, label in (("x1", "the inputs x1"), ("x2", "the inputs x2"),
                       ("model", "the model/network")):
        if key in parts and parts[key] != prints[key]:
            what.append(label)
    before = old.get("settings") or {}
    for key in sorted(set(before) | set(settings)):
        if before.get(key) != settings.get(key):
            name = "the torch_ntk version" if key == "torch_ntk" else key
            what.append(f"{name} {before.get(key)} → {settings.get(key)}")
    return ", ".join(what) if what else "inputs, model or settings differ"


def prepare(out, partial, manifest, prints, grid, dtype, settings, overwrite):
    """Rank 0: decide between 'already complete', 'resume' and 'start' (a dict with
    "complete", "done", "notes"), or refuse ({"error": message, "conflict": True})."""
    digest = prints["all"]
    old = read_json(manifest)
    old = old if isinstance(old, dict) else None
    ours = bool(old) and old.get("fingerprint") == digest
    finished = bool(old) and bool(old.get("complete"))
    notes: list[str] = []
    complete = {"complete": True, "done": list(range(len(grid))), "notes": notes}

    def refuse(reason: str, what: str) -> dict:
        return {"error": f"tiled_kernel: {reason}; pass overwrite=True (--overwrite) to {what}",
                "conflict": True}

    if os.path.exists(out):
        if ours and finished:
            change = result_changed(out, old)
            if change is None:
                return complete
            reason = (f"{out} exists but is not known to be this kernel: {manifest} records "
                      f"this computation as finished, but {change}")
        elif finished:
            reason = (f"{out} exists and is the result of another computation "
                      f"({differs(old, prints, settings)})")
        else:
            reason = (f"{out} exists and no manifest records it as the result of this "
                      "computation")
        if not overwrite:
            return refuse(reason, "replace it")
        os.remove(out)
        notes.append(f"{reason}: replaced (overwrite)")
    elif ours and finished:
        if os.path.exists(partial) and result_changed(partial, old) is None:
            os.replace(partial, out)  # finished and recorded, stopped before the rename
            for path in rank_manifests(out):
                os.remove(path)
            return complete
        notes.append(f"{manifest} records this computation as finished, but {out} is gone: "
                     "computing it again")
    done: set[int] = set()
    if os.path.exists(partial):
        recorded = old.get("fingerprint") if old else None
        stale = [p for p in rank_manifests(out) if (read_json(p) or {}).get("fingerprint")
                 not in (None, digest)]
        other = recorded not in (None, digest) or bool(stale)
        if other:
            what = (differs(old, prints, settings) if old else
                    "its rank manifests record another")
            reason = f"{partial} is a partial run of a different computation ({what})"
            if not overwrite:
                return refuse(reason, "discard it (or rerun that computation's command to "
                                      "finish it)")
            notes.append(f"{reason}: discarded (overwrite)")
        elif not (ours and finished):
            try:
                header = np.load(partial, mmap_mode="r")
                usable = header.shape == (grid.n1, grid.n2) and header.dtype == dtype
                del header
            except (OSError, ValueError):
                usable = False
            if usable:
                done = collect_done(out, digest)
                if not done and old is None:
                    notes.append(f"{partial} has no manifest recording finished tiles: "
                                 "starting over")
            else:
                notes.append(f"{partial} is not a [{grid.n1}, {grid.n2}] {dtype} array "
                             "(damaged or of another run): starting over")
    if not done:
        for path in rank_manifests(out):
            os.remove(path)
        np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(grid.n1, grid.n2))
    write_json(manifest, manifest_payload(prints, grid, settings, done, False, partial),
               indent=None)
    for path in rank_manifests(out):  # merged above; a crash before this line re-merges
        os.remove(path)
    return {"complete": False, "done": sorted(done), "notes": notes}


def finish(out, partial, manifest, prints, grid, settings):
    """Rank 0, every tile done: record the result (size, mtime, checksum) in the manifest,
    then rename the partial file to ``out`` (a crash between the two: the next run finds
    the recorded partial file and renames it)."""
    digest = prints["all"]
    done = collect_done(out, digest)
    if len(done) != len(grid):
        missing = sorted(set(range(len(grid))) - done)[:10]
        return (f"tiled_kernel: {len(grid) - len(done)} tiles are not recorded as done after "
                f"all ranks finished (e.g. {missing}); rerun to complete them")
    write_json(manifest, manifest_payload(prints, grid, settings, done, True, out,
                                           result_identity(partial)), indent=None)
    os.replace(partial, out)  # a rename keeps the size and mtime recorded above
    for path in rank_manifests(out):
        os.remove(path)
    return True
