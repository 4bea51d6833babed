"""Kernels beyond one device: tiled computation over ``torch.distributed``, out-of-core
results that resume after a crash, and a conjugate-gradient solver that streams over them.

    >>> import torch, torch_ntk as tn
    >>> from torch_ntk.distributed import tiled_kernel, conjugate_gradient
    >>> x = torch.randn(5000, 10, dtype=torch.float64)
    >>> stats = tiled_kernel(tn.mlp_spec([10, 512, 512, 1]), x, kind="ntk",
    ...                      out="K.npy", tile_size=1024)          # doctest: +SKIP
    >>> fit = conjugate_gradient("K.npy", y, ridge=1e-3, tol=1e-8)  # doctest: +SKIP

From the command line: ``torch-ntk kernel ... --distributed`` (one process, resumable) or
``torchrun --nproc_per_node=2 -m torch_ntk kernel ...`` (every rank runs the same line);
``python -m torch_ntk.distributed kernel ...`` is an alias of the first, and
``python -m torch_ntk.distributed solve ...`` runs the CG solver.
"""

from .command import main, process_group
from .kernel import TiledKernelStats, fingerprint, tiled_kernel
from .tiles import KINDS, TileGrid, TileSource
from .solver import CGResult, conjugate_gradient, kernel_operator

__all__ = ["CGResult", "KINDS", "TileGrid", "TiledKernelStats", "conjugate_gradient",
           "TileSource", "fingerprint", "kernel_operator", "main", "process_group", "tiled_kernel"]
