"""Kernel regression on an out-of-core kernel: preconditioned conjugate gradients.

Solves (K + λ I) α = y for a symmetric positive semi-definite K [N, N] (λ > 0, or K
positive definite) that need not fit in memory: K is a path to a ``.npy`` (memory-mapped
read-only), a NumPy array/memmap or a tensor — or an operator that is never formed, any
object with ``shape``, ``matvec(v)`` for v [N, m] and ``diagonal()`` (such as
``torch_ntk.NTKOperator``: Θ·v by a vjp/jvp pair), applied whole on every rank. Each
matrix–vector product with a stored K streams over row blocks K[a:b, :]; with a process
group, rank r takes row blocks r, r+W, … and the partial products are summed with
``all_reduce``, so every rank reads only its rows and every rank holds the same iterates.
Vectors are [N] or [N, m] (m right-hand sides solved together, each with its own step
sizes) in float64 by default.

Preconditioners M ≈ K + λI (applied as M⁻¹r):
  "jacobi"  diag(K) + λ;
  "block"   block-Jacobi: the Cholesky factors of the diagonal blocks K[a:b, a:b] + λI of
            ``block_size`` rows (each rank factors its own blocks once);
  "none".

Stopping rule (the stated tolerance): every column satisfies ‖y − (K + λI)α‖ ≤ tol·‖y‖,
with the residual recurrence checked by one explicit product at the end
(``final_residual``). The error then obeys ‖α − α*‖/‖α*‖ ≤ κ(K + λI)·tol.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["CGResult", "conjugate_gradient", "kernel_operator"]

PRECONDITIONERS = ("jacobi", "block", "none")


@dataclass
class CGResult:
    """solution: α, shaped like y. iterations: CG steps taken. converged: all columns
    met the tolerance. residuals: max over columns of ‖r_k‖/‖y‖ per iteration (k = 0 first).
    final_residual: the same, recomputed from an explicit product at the end.
    matvecs: products with K (one per iteration, plus the final check)."""

    solution: Tensor
    iterations: int
    converged: bool
    residuals: list = field(default_factory=list)
    final_residual: float = float("nan")
    tol: float = 0.0
    ridge: float = 0.0
    preconditioner: str = "jacobi"
    matvecs: int = 0
    seconds: float = 0.0

    def report(self) -> dict:
        return {"iterations": self.iterations, "converged": self.converged,
                "residuals": self.residuals, "final_residual": self.final_residual,
                "tol": self.tol, "ridge": self.ridge, "preconditioner": self.preconditioner,
                "matvecs": self.matvecs, "seconds": self.seconds}


class kernel_operator:
    """v ↦ (K + λI) v streamed over this rank's row blocks of K, summed over ranks."""

    def __init__(self, kernel, ridge: float = 0.0, *, row_block: Optional[int] = None,
                 group=None, dtype: torch.dtype = torch.float64, device="cpu"):
        self.operator = kernel if callable(getattr(kernel, "matvec", None)) else None
        if self.operator is not None:
            self._init_operator(kernel, ridge, dtype, device)
            return
        if isinstance(kernel, (str, os.PathLike)):
            kernel = np.load(os.fspath(kernel), mmap_mode="r")
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"conjugate_gradient: the kernel must be square [N, N]; got "
                             f"{tuple(kernel.shape)}")
        if not ridge >= 0:
            raise ValueError(f"conjugate_gradient: ridge must be ≥ 0; got {ridge!r}")
        self.kernel, self.ridge, self.dtype, self.device = kernel, float(ridge), dtype, device
        self.n = kernel.shape[0]
        if row_block is None:  # about 64 MB of kernel rows per block
            itemsize = kernel.element_size() if isinstance(kernel, Tensor) else kernel.itemsize
            row_block = max(1, min(self.n, (64 << 20) // max(1, self.n * itemsize)))
        self.row_block = int(row_block)
        self.active = dist.is_available() and dist.is_initialized()
        self.group = group
        self.rank = dist.get_rank(group) if self.active else 0
        self.world = dist.get_world_size(group) if self.active else 1
        blocks = [(a, min(a + self.row_block, self.n)) for a in range(0, self.n, self.row_block)]
        self.blocks = blocks[self.rank::self.world]
        self.matvecs = 0

    def _init_operator(self, op, ridge: float, dtype: torch.dtype, device) -> None:
        """An operator kernel (``matvec``, ``diagonal``, ``shape``): no rows to stream."""
        shape = tuple(getattr(op, "shape", ()))
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"conjugate_gradient: the kernel operator must be square [N, N]; "
                             f"got shape {shape}")
        if not callable(getattr(op, "diagonal", None)):
            raise ValueError("conjugate_gradient: a kernel operator needs a diagonal() method "
                             "(for the Jacobi preconditioner) besides matvec")
        if not ridge >= 0:
            raise ValueError(f"conjugate_gradient: ridge must be ≥ 0; got {ridge!r}")
        self.kernel, self.ridge, self.dtype, self.device = op, float(ridge), dtype, device
        self.n = shape[0]
        self.op_dtype = getattr(op, "dtype", dtype)
        self.op_device = getattr(op, "device", device)
        self.active, self.group, self.rank, self.world = False, None, 0, 1
        self.blocks, self.matvecs = [], 0

    def rows(self, a: int, b: int) -> Tensor:
        k = self.kernel[a:b]
        k = k if isinstance(k, Tensor) else torch.from_numpy(np.require(k, requirements="CW"))
        return k.to(device=self.device, dtype=self.dtype)

    def _reduce(self, t: Tensor) -> Tensor:
        if self.active:
            dist.all_reduce(t, group=self.group)
        return t

    def __call__(self, v: Tensor) -> Tensor:
        if self.operator is not None:
            self.matvecs += 1
            w = v.to(dtype=self.op_dtype, device=self.op_device)
            out = self.operator.matvec(w).to(dtype=v.dtype, device=v.device)
            return out + self.ridge * v
        out = torch.zeros_like(v)
        for a, b in self.blocks:
            out[a:b] = self.rows(a, b) @ v
        self.matvecs += 1
        return self._reduce(out) + self.ridge * v

    def diagonal(self) -> Tensor:
        if self.operator is not None:
            d = self.operator.diagonal().reshape(-1)
            return d.to(dtype=self.dtype, device=self.device) + self.ridge
        d = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for a, b in self.blocks:
            d[a:b] = self.rows(a, b)[:, a:b].diagonal()
        return self._reduce(d) + self.ridge

    def block_preconditioner(self, block_size: int):
        """M⁻¹ for the block-Jacobi preconditioner, diagonal blocks of ``block_size``."""
        if self.operator is not None:
            raise ValueError("conjugate_gradient: preconditioner='block' needs the kernel's "
                             "diagonal blocks, which an operator does not hold; use "
                             "preconditioner='jacobi' (its diagonal()) or 'none'")
        blocks = [(a, min(a + block_size, self.n)) for a in range(0, self.n, block_size)]
        factors = []
        for a, b in blocks[self.rank::self.world]:
            k = self.kernel[a:b, a:b]
            k = k if isinstance(k, Tensor) else torch.from_numpy(np.require(k, requirements="CW"))
            k = k.to(device=self.device, dtype=self.dtype)
            k = k + self.ridge * torch.eye(b - a, dtype=self.dtype, device=self.device)
            chol, info = torch.linalg.cholesky_ex(k)
            if int(info) != 0:
                raise ValueError(
                    f"conjugate_gradient: the diagonal block [{a}:{b}] of K + ridge·I is not "
                    "positive definite; use a positive ridge or preconditioner='jacobi'"
                )
            factors.append((a, b, chol))

        def apply(r: Tensor) -> Tensor:
            z = torch.zeros_like(r)
            for a, b, chol in factors:
                rb = r[a:b] if r.ndim == 2 else r[a:b, None]
                zb = torch.cholesky_solve(rb, chol)
                z[a:b] = zb if r.ndim == 2 else zb[:, 0]
            return self._reduce(z)

        return apply


def conjugate_gradient(
    kernel: Union[str, os.PathLike, np.ndarray, Tensor],
    y: Union[np.ndarray, Tensor],
    ridge: float = 0.0,
    *,
    tol: float = 1e-8,
    max_iter: Optional[int] = None,
    preconditioner: str = "jacobi",
    block_size: int = 512,
    row_block: Optional[int] = None,
    group=None,
    dtype: torch.dtype = torch.float64,
    device="cpu",
    progress: bool = False,
) -> CGResult:
    """Solve (K + ridge·I) α = y by preconditioned conjugate gradients.

    Args:
        kernel: K [N, N], symmetric PSD: a ``.npy`` path (memory-mapped), array or tensor;
            or an operator with ``shape`` (N, N), ``matvec(v)`` (v [N, m] → K v [N, m]) and
            ``diagonal()`` ([N]), e.g. :class:`torch_ntk.NTKOperator` (K = Θ(x, x) over
            the N = samples × outputs entries, never formed); ``row_block`` is then
            unused, "block" preconditioning is refused, and with a process group every
            rank applies the whole operator (no reduction).
        y: [N] or [N, m] targets.
        ridge: λ ≥ 0 added to the diagonal (needed when K is singular).
        tol: stop when ‖y − (K + λI)α‖ ≤ tol·‖y‖ for every column.
        max_iter: at most this many iterations (default: 10·N).
        preconditioner: "jacobi", "block" (block-Jacobi, ``block_size`` rows) or "none".
        row_block: rows of K read per streamed block (default: ~64 MB).
        group: process group (default: the default group when initialized; call on every
            rank with the same arguments; every rank returns the same solution).
        dtype, device: of the iterates and of the products (K blocks are cast).
        progress: print the residual every 10 iterations on rank 0.

    Returns:
        :class:`CGResult` (``converged`` False when max_iter ran out: no exception).
    """
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"conjugate_gradient: preconditioner must be one of {PRECONDITIONERS}; "
                         f"got {preconditioner!r}")
    if not tol > 0:
        raise ValueError(f"conjugate_gradient: tol must be positive; got {tol!r}")
    start = time.perf_counter()
    op = kernel_operator(kernel, ridge, row_block=row_block, group=group, dtype=dtype,
                         device=device)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
    if y.shape[0] != op.n or y.ndim not in (1, 2):
        raise ValueError(f"conjugate_gradient: y must be [{op.n}] or [{op.n}, m]; got "
                         f"{tuple(y.shape)}")
    vector = y.ndim == 1
    b = y.to(device=device, dtype=dtype).reshape(op.n, -1)
    max_iter = 10 * op.n if max_iter is None else int(max_iter)

    if preconditioner == "jacobi":
        d = op.diagonal()
        if not bool((d > 0).all()):
            raise ValueError("conjugate_gradient: diag(K) + ridge has non-positive entries; "
                             "use a positive ridge or preconditioner='none'")
        precond = lambda r: r / d[:, None]  # noqa: E731
    elif preconditioner == "block":
        precond = op.block_preconditioner(int(block_size))
    else:
        precond = lambda r: r  # noqa: E731

    b_norm = b.norm(dim=0)
    scale = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    x = torch.zeros_like(b)
    r = b.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(0)
    residuals = [float((r.norm(dim=0) / scale).max())]
    iterations = 0
    converged = residuals[-1] <= tol
    while not converged and iterations < max_iter:
        q = op(p)
        pq = (p * q).sum(0)
        live = (r.norm(dim=0) / scale > tol) & (pq > 0)
        alpha = torch.where(live, rz / torch.where(pq > 0, pq, torch.ones_like(pq)),
                            torch.zeros_like(pq))
        x += alpha * p
        r -= alpha * q
        iterations += 1
        residuals.append(float((r.norm(dim=0) / scale).max()))
        if progress and op.rank == 0 and iterations % 10 == 0:
            print(f"cg: iteration {iterations}, relative residual {residuals[-1]:.3e}",
                  flush=True)
        if residuals[-1] <= tol or not bool(live.any()):
            converged = residuals[-1] <= tol
            break
        z = precond(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(live & (rz > 0), rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)),
                           torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    final = float(((b - op(x)).norm(dim=0) / scale).max())
    if not math.isfinite(final):
        raise ValueError("conjugate_gradient: the iteration diverged (NaN/Inf); is K symmetric "
                         "positive semi-definite and ridge > 0 where K is singular?")
    return CGResult(x[:, 0] if vector else x, iterations, converged, residuals, final, tol,
                    float(ridge), preconditioner, op.matvecs, time.perf_counter() - start)
