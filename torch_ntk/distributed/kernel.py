"""Tiled kernels over a ``torch.distributed`` process group, written out of core.

K(X1, X2) [N1, N2] is cut into a grid of T×T tiles (the last row/column of tiles is
smaller when T does not divide N). Tiles are ordered row-major — for X2 = X1 only the
upper triangle i ≤ j, each off-diagonal tile written twice (K and Kᵀ) — and the tiles
still to do are split into W contiguous runs, one per rank, each walked row band by row
band in a serpentine (:class:`~torch_ntk.distributed.tiles.TileGrid`), so that a rank
stays on few bands. An analytic tile is the single-device fused op on its slices::

    K[a:b, c:d] = analytic_kernels(spec, X1[a:b], X2[c:d]).ntk     (off-diagonal)
    K[a:b, a:b] = analytic_kernels(spec, X1[a:b]).ntk              (diagonal, x2=None)

an empirical tile the Gram products of its row and column bands' features, which each
rank computes once and caches within ``memory_budget``
(:class:`~torch_ntk.distributed.tiles.TileSource`). Diagonal tiles, and with them the
whole matrix, are exactly symmetric.

Out of core: ranks write their tiles straight into a memory-mapped ``.npy``
(``<out>.partial`` until every tile is done, then renamed to ``<out>``) on a filesystem
they share; no rank holds more than one tile of the output (and, for the empirical kind,
its cached band features). After each tile the map is flushed and
the rank's manifest ``<out>.manifest.rank<r>.json`` (finished tile ids) is replaced
atomically — after every tile, or every ``checkpoint_s`` seconds to spare the syncs — so a
killed run resumes from the tiles recorded there and never recomputes a recorded tile or
trusts a half-written one; Ctrl-C (KeyboardInterrupt) or an error in a tile makes a last
checkpoint of the finished tiles before the exception leaves. Rank 0 merges the rank
manifests into ``<out>.manifest.json`` at start and at the end, where it records the
result (``"complete": true``, the file's size, mtime and, up to 256 MiB, sha256) before
renaming ``<out>.partial`` to ``<out>``. A resumed run may use another world size.

What is on disk is trusted only when it belongs to this very computation: the manifest's
fingerprint (inputs, model, settings, shapes, the torch_ntk version) must equal this run's,
and a finished ``<out>`` must still be the file the manifest recorded (same size and
checksum, or same size and mtime when it was too large to hash). A result or partial run of
another computation, or a result changed since, is refused (naming what differs) unless
``overwrite``; a result that is gone, or a partial run without a manifest, is computed
again with a note on stderr.

Multi-host: tiles of one row band share file pages at their column edges. Local disks
and parallel filesystems (Lustre, GPFS, BeeGFS) keep concurrent writes to distinct bytes
of one file; NFS does not guarantee it — there, write to node-local storage per host or
use tile sizes that are a multiple of the page size in bytes per row.

Every rank hashes its inputs, spec/model and settings at start; the hashes are
all-gathered and a disagreement is a ValueError naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..lifting.lift import LayerSpec
from .._utils.model_context import kernel_context
from .._utils.files import write_json
from .._utils.runtime import default_memory_budget, progress_bar
from .manifest import (MANIFEST_FORMAT, OutputConflict, collect_done, finish, prepare,
                       recorded_tiles)
from .tiles import KINDS, TileGrid, TileSource, check_tile_inputs

__all__ = ["KINDS", "OutputConflict", "TileGrid", "TiledKernelStats", "tiled_kernel",
           "fingerprint", "recorded_tiles"]


# --------------------------------------------------------------------- process group


def _group_info(group) -> tuple[bool, int, int]:
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise ValueError("tiled_kernel: a group was given but torch.distributed is not initialized")
    return False, 0, 1


def _broadcast(obj, active: bool, group):
    if not active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group else 0,
                               group=group)
    return box[0]


def _all_gather(obj, active: bool, world: int, group) -> list:
    if not active:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def _barrier(active: bool, group) -> None:
    if active:
        dist.barrier(group=group)


# --------------------------------------------------------------------------- hashing


def _hash_tensor(h, x: Optional[Tensor]) -> None:
    if x is None:
        h.update(b"none")
        return
    x = x.detach().cpu().contiguous()
    h.update(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")


def fingerprint(kind: str, model_or_spec, x1: Tensor, x2: Optional[Tensor],
                settings: dict) -> dict[str, str]:
    """sha256 digests of what decides the kernel: ``x1``, ``x2``, ``model`` (the spec for
    analytic kernels; architecture and parameter values for the empirical NTK) and
    ``settings``; ``all`` combines them."""
    parts = {}
    for name, x in (("x1", x1), ("x2", x2)):
        h = hashlib.sha256()
        _hash_tensor(h, x)
        parts[name] = h.hexdigest()
    h = hashlib.sha256()
    if kind == "empirical":
        h.update(repr(model_or_spec).encode())
        for key, value in model_or_spec.state_dict().items():
            h.update(key.encode())
            _hash_tensor(h, value)
        for p in model_or_spec.parameters():
            h.update(b"1" if p.requires_grad else b"0")
    else:
        h.update(repr(model_or_spec).encode())
    parts["model"] = h.hexdigest()
    parts["settings"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    parts["all"] = hashlib.sha256("".join(parts[k] for k in sorted(parts)).encode()).hexdigest()
    return parts


def _check_agreement(prints: list[dict]) -> None:
    if all(p["all"] == prints[0]["all"] for p in prints):
        return
    what = {"x1": "the inputs x1", "x2": "the inputs x2", "model": "the model/spec",
            "settings": "the settings (kind, tile size, dtype, shapes, method)"}
    lines = []
    for key, label in what.items():
        values = [p[key] for p in prints]
        if len(set(values)) > 1:
            per_rank = ", ".join(f"rank {r}: {v[:12]}" for r, v in enumerate(values))
            lines.append(f"{label} differ ({per_rank})")
    raise ValueError(
        "tiled_kernel: the ranks disagree about their inputs — " + "; ".join(lines)
        + ". Every rank must pass the same x1, x2, model/spec and settings (load the same "
        "files, seed the model identically)."
    )


# ---------------------------------------------------------------------------- stats


@dataclass
class TiledKernelStats:
    """What a :func:`tiled_kernel` run did.

    tiles_total: tiles in the grid; tiles_skipped: already finished when the run started
    (resumed); computed: ids of the tiles computed in this run, by rank (all ranks);
    seconds: wall time of the compute phase (after setup); tiles_per_s: computed tiles
    per second over all ranks; complete: every tile is done (the file is final);
    method: how tiles were computed ("analytic", "structured", "jacobian", "ntk_vp");
    feature_samples: per rank, the samples whose (structured) features it computed —
    each band's rows once when its cache held them, so at most N1 + N2; notes: what was
    found on disk and discarded or redone (also printed on stderr by rank 0).
    """

    path: Optional[str]
    shape: tuple[int, int]
    tile_size: int
    world_size: int
    tiles_total: int
    tiles_skipped: int
    computed: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False
    fingerprint: str = ""
    method: str = ""
    feature_samples: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def tiles_computed(self) -> int:
        return sum(len(c) for c in self.computed)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles_computed / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"path": self.path, "shape": list(self.shape), "tile_size": self.tile_size,
                "world_size": self.world_size, "tiles_total": self.tiles_total,
                "tiles_skipped": self.tiles_skipped, "tiles_computed": self.tiles_computed,
                "computed": self.computed, "seconds": self.seconds,
                "tiles_per_s": self.tiles_per_s, "complete": self.complete,
                "fingerprint": self.fingerprint, "method": self.method,
                "feature_samples": self.feature_samples, "notes": self.notes}


# ------------------------------------------------------------------------ main entry


def tiled_kernel(
    model_or_spec: Union[nn.Module, LayerSpec],
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    kind: str = "ntk",
    out: Union[str, os.PathLike, Tensor],
    tile_size: int = 1024,
    group=None,
    method: str = "auto",
    memory_budget: Optional[int] = None,
    overwrite: bool = False,
    checkpoint_s: float = 2.0,
    progress: Optional[bool] = None,
    _stop_after_tiles: Optional[int] = None,
) -> TiledKernelStats:
    """Compute K(x1, x2) tile by tile over the ranks of a process group.

    Call it on every rank with the same arguments (checked by hash). Without an
    initialized ``torch.distributed`` process group it runs in this process alone.

    Args:
        model_or_spec: an ``nn.Sequential`` that lifts or a LayerSpec for "nngp"/"ntk";
            any ``nn.Module`` accepted by :func:`torch_ntk.empirical_ntk` for "empirical".
        x1: [N1, n_0] float32/float64 on the device this rank computes on; for a CNN,
            images [N1, C, H, W] (or [N1, C, L]).
        x2: [N2, ...] like x1, or None for x2 = x1: then only tiles i ≤ j are computed,
            off-diagonal ones mirrored, and K is exactly symmetric.
        kind: "nngp" or "ntk" (infinite width, :func:`torch_ntk.analytic_kernels`) or
            "empirical" (finite-width trace NTK (1/n_L) Σ_k Θ_kk, :func:`torch_ntk.empirical_ntk`).
        out: a path for a ``.npy`` [N1, N2] of x1's dtype (data go to ``<out>.partial``,
            renamed to ``out`` when every tile is done; manifests ``<out>.manifest*.json``),
            or a [N1, N2] tensor of x1's dtype (CPU, any strides). A tensor gets this
            rank's tiles only — share it between ranks (``torch.from_file(...,
            shared=True)``) to see them all — and has no manifest, so no resume.
        tile_size: T, rows and columns per tile.
        group: the process group (default: the default group when initialized).
        method: the empirical_ntk method for kind="empirical" ("auto": structured when
            the model lifts, else Jacobians).
        memory_budget: bytes for an empirical tile's working set and the cache of band
            features (structured: activations and cotangents; jacobian: per-sample
            Jacobians); bands that do not fit are recomputed when needed again. Default:
            :func:`torch_ntk._utils.runtime.default_memory_budget` divided among the ranks of
            this host (``LOCAL_WORLD_SIZE``).
        overwrite: discard an existing ``out`` or partial run that is not known to be this
            computation's (see above) instead of raising :class:`OutputConflict`.
        checkpoint_s: seconds between checkpoints: a checkpoint flushes the memory map to
            disk (msync) and then records the tiles computed since in the rank's manifest
            (written with fsync, replaced atomically). A crash loses at most this much work
            (default 2 s; KeyboardInterrupt and errors make a last checkpoint, losing none);
            0 checkpoints after every tile (each costs a sync, ~10-20 ms on a local disk).
        progress: tqdm bar on rank 0 (tiles done over all ranks, rate, ETA); None shows
            it once the run takes over two seconds.

    Returns:
        :class:`TiledKernelStats` (the same on every rank). Read the kernel with
        ``np.load(out, mmap_mode="r")``.

    Raises:
        TypeError: non-tensor or non-float (e.g. integer) inputs.
        ValueError: an empty x1, NaN/Inf, inputs of the wrong width or image shape (the
            message gives the input's shape), x2 unlike x1 — all checked before any
            file is written; ranks disagree about inputs/model/settings;
            :class:`OutputConflict` (a ValueError): an existing ``out`` or partial run is
            not known to be this computation's (without ``overwrite``); bad
            ``kind``/``tile_size``/``out``.
    """
    if kind not in KINDS:
        raise ValueError(f"tiled_kernel: kind must be one of {KINDS}; got {kind!r}")
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 1:
        raise ValueError(f"tiled_kernel: tile_size must be a positive integer; got {tile_size!r}")
    if memory_budget is not None and not (isinstance(memory_budget, (int, float))
                                          and memory_budget > 0):
        raise ValueError("tiled_kernel: memory_budget must be a positive number of bytes; got "
                         f"{memory_budget!r}")
    if x2 is x1:
        x2 = None
    # Every input check comes before anything is hashed, allocated or written.
    model_or_spec, x1, x2, plan = check_tile_inputs(kind, model_or_spec, x1, x2)
    if kind == "empirical":
        with kernel_context(model_or_spec, x1, x2):
            return _tiled(model_or_spec, x1, x2, kind, out, tile_size, group, method,
                          memory_budget, overwrite, checkpoint_s, progress, _stop_after_tiles,
                          plan)
    return _tiled(model_or_spec, x1, x2, kind, out, tile_size, group, method, memory_budget,
                  overwrite, checkpoint_s, progress, _stop_after_tiles, plan)


def _tiled(model_or_spec, x1, x2, kind, out, tile_size, group, method, memory_budget,
           overwrite, checkpoint_s, progress, stop_after, plan) -> TiledKernelStats:
    active, rank, world = _group_info(group)
    symmetric = x2 is None
    n1, n2 = x1.shape[0], (x1 if symmetric else x2).shape[0]
    grid = TileGrid(n1, n2, tile_size, symmetric)
    dtype = np.dtype(str(x1.dtype).replace("torch.", ""))

    from .._utils.version import VERSION as __version__

    settings = {"kind": kind, "tile_size": tile_size, "shape": [n1, n2], "dtype": dtype.str,
                "symmetric": symmetric,
                "method": method if kind == "empirical" else None, "torch_ntk": __version__}
    prints = fingerprint(kind, model_or_spec, x1, x2, settings)
    _check_agreement(_all_gather(prints, active, world, group))
    digest = prints["all"]
    if memory_budget is None:  # the ranks on one host share its memory
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        memory_budget = default_memory_budget(x1.device) // local
    if not isinstance(out, Tensor):
        out = os.fspath(out)
    elif (tuple(out.shape) != (n1, n2) or out.dtype != x1.dtype or out.device.type != "cpu"):
        raise ValueError(
            f"tiled_kernel: out must be a CPU tensor of shape [{n1}, {n2}] and dtype "
            f"{x1.dtype}; got {tuple(out.shape)} {out.dtype} on {out.device}")

    def source() -> TileSource:  # built once the tiles to do are known
        return TileSource(kind, model_or_spec, x1, x2, tile_size=tile_size, method=method,
                          plan=plan, memory_budget=int(min(memory_budget, 2**62)))

    if isinstance(out, Tensor):
        return _run_into_tensor(out, grid, source(), rank, world, active, group, digest,
                                progress, stop_after)

    partial, manifest = out + ".partial", out + ".manifest.json"

    # Rank 0 inspects what is on disk and decides; everyone follows its decision.
    decision = None
    if rank == 0:
        try:  # an error here must reach every rank, or they would wait forever
            decision = prepare(out, partial, manifest, prints, grid, dtype, settings,
                                overwrite)
        except OSError as error:
            decision = {"error": f"tiled_kernel: cannot prepare {out}: {error}"}
    decision = _broadcast(decision, active, group)
    if "error" in decision:
        raise (OutputConflict if decision.get("conflict") else ValueError)(decision["error"])
    notes = decision["notes"]
    if rank == 0:
        for note in notes:
            print(f"tiled_kernel: {note}", file=sys.stderr, flush=True)
    done = set(decision["done"])
    if decision["complete"]:
        return TiledKernelStats(out, (n1, n2), tile_size, world, len(grid), len(grid),
                                [[] for _ in range(world)], 0.0, True, digest,
                                "", [0] * world, notes)

    _barrier(active, group)  # rank 0 has created the file and merged the old manifests
    data = np.lib.format.open_memmap(partial, mode="r+")
    mine = grid.order(TileGrid.assign([t for t in range(len(grid)) if t not in done], rank,
                                      world))
    tiles = source()
    rank_manifest = f"{out}.manifest.rank{rank}.json"
    remaining_total = len(grid) - len(done)
    bar = _progress_bar(progress, rank, remaining_total, len(done), len(grid))
    computed: list[int] = []
    start = time.perf_counter()
    last_poll = last_checkpoint = start
    recorded = 0  # len(computed) at the last checkpoint

    def checkpoint() -> None:
        data.flush()  # the tiles are on disk before they are recorded as done
        write_json(rank_manifest, {"format": MANIFEST_FORMAT, "fingerprint": digest,
                                   "rank": rank, "done": computed}, indent=None)

    try:
        for tile_id in mine:
            a, b, c, d = grid.bounds(tile_id)
            k = tiles.tile(a, b, c, d, symmetric and a == c)
            k = k.detach().cpu().numpy()
            data[a:b, c:d] = k
            if symmetric and a != c:
                data[c:d, a:b] = k.T
            computed.append(tile_id)  # only once both copies of the tile are written
            now = time.perf_counter()
            if now - last_checkpoint >= checkpoint_s or tile_id == mine[-1]:
                checkpoint()
                recorded, last_checkpoint = len(computed), now
            if stop_after is not None and len(computed) >= stop_after:
                os._exit(75)  # simulate a crash (tests): no cleanup, like SIGKILL
            if bar is not None:
                now = time.perf_counter()
                if world == 1 or now - last_poll > 1.0 or tile_id == mine[-1]:
                    last_poll = now
                    others = (len(collect_done(out, digest) - done - set(mine))
                              if world > 1 else 0)
                    bar.update(max(0, others + len(computed) - bar.n))
    except BaseException:  # Ctrl-C, SIGTERM under the CLI, an error: keep the finished tiles
        if len(computed) > recorded:
            try:
                checkpoint()
            except BaseException:  # noqa: BLE001 — the first exception is the one to report
                pass
        if bar is not None:
            bar.close()
        raise
    seconds = time.perf_counter() - start
    del data
    all_computed = _all_gather(computed, active, world, group)
    seconds = max(_all_gather(seconds, active, world, group))
    features = _all_gather(tiles.feature_samples, active, world, group)

    complete = None
    if rank == 0:
        try:
            complete = finish(out, partial, manifest, prints, grid, settings)
        except OSError as error:
            complete = f"tiled_kernel: cannot finish {out}: {error}"
    complete = _broadcast(complete, active, group)
    if bar is not None:
        bar.update(remaining_total - bar.n)
        bar.close()
    if isinstance(complete, str):
        raise RuntimeError(complete)
    return TiledKernelStats(out, (n1, n2), tile_size, world, len(grid), len(done), all_computed,
                            seconds, True, digest, tiles.method, features, notes)


def _progress_bar(progress, rank, total, initial, grand_total):
    """Rank 0's bar over the tiles (None on the other ranks)."""
    return progress_bar(total, progress=progress, desc=f"kernel tiles ({initial}/{grand_total} "
                        "done before)", unit="tile", leave=True, enabled=rank == 0)


def _run_into_tensor(out, grid, tiles, rank, world, active, group, digest, progress,
                     stop_after):
    mine = grid.order(TileGrid.assign(range(len(grid)), rank, world))
    bar = _progress_bar(progress, rank, len(mine), 0, len(grid))
    start = time.perf_counter()
    computed = []
    for tile_id in mine:
        a, b, c, d = grid.bounds(tile_id)
        k = tiles.tile(a, b, c, d, grid.symmetric and a == c).detach().cpu()
        out[a:b, c:d] = k
        if grid.symmetric and a != c:
            out[c:d, a:b] = k.T
        computed.append(tile_id)
        if bar is not None:
            bar.update(1)
        if stop_after is not None and len(computed) >= stop_after:
            os._exit(75)
    if bar is not None:
        bar.close()
    seconds = max(_all_gather(time.perf_counter() - start, active, world, group))
    return TiledKernelStats(None, (grid.n1, grid.n2), grid.tile, world, len(grid), 0,
                            _all_gather(computed, active, world, group), seconds, True, digest,
                            tiles.method, _all_gather(tiles.feature_samples, active, world,
                                                      group))
