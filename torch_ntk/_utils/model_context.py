"""Evaluating a user's model for a kernel: looking through wrappers, and leaving no trace."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from .runtime import cuda_devices_of, forked_rng

__all__ = ["WRAPPED_MODEL_ATTRIBUTE", "kernel_context", "unwrap"]

# A wrapper class (torch_ntk.NTK) sets this class attribute to the name of the attribute
# that holds the wrapped model; unwrap looks through it without importing the wrapper.
WRAPPED_MODEL_ATTRIBUTE = "wrapped_model_attribute"


def unwrap(model: nn.Module) -> nn.Module:
    """The module that actually holds the layers: strips :class:`torch_ntk.NTK`,
    ``torch.compile`` (``_orig_mod``) and ``DataParallel``/``DistributedDataParallel``
    (``module``) wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module; got {type(model).__name__}")
    while True:
        inner = getattr(type(model), WRAPPED_MODEL_ATTRIBUTE, None)
        if inner is not None:
            model = getattr(model, inner)
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def kernel_context(model: nn.Module, *tensors: Optional[Tensor]) -> Iterator[None]:
    """Evaluate ``model`` for a kernel without leaving a trace on it or on training.

    Inside: every module in eval mode, gradient recording off, and the fast path of
    ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` off (its fused kernel has no
    forward-mode AD, so ``method="ntk_vp"`` would fail on it; the slow path computes the
    same function), and ``scaled_dot_product_attention`` on its math backend (the fused
    flash/memory-efficient kernels have no forward-mode AD either, which the jvp of
    ``ntk_vp`` and ``NTKOperator`` needs; the math backend computes the same function).
    On exit: each module's own ``training`` flag restored (mixed modes survive), the
    fast-path and backend switches restored, and the CPU random
    generator and those of the CUDA devices holding the model or ``tensors`` reset to
    their state on entry, so training that follows draws the same dropout masks and
    augmentations as without the kernel computation.
    """
    modes = [(m, m.training) for m in model.modules()]
    with forked_rng(cuda_devices_of(model, *tensors)), torch.no_grad(), _mha_fastpath_off(), \
            _sdpa_math():
        try:
            model.eval()
            yield
        finally:
            for m, mode in modes:
                m.training = mode


@contextlib.contextmanager
def _sdpa_math() -> Iterator[None]:
    """scaled_dot_product_attention restricted to its math backend inside (a no-op on a
    torch without ``torch.nn.attention.sdpa_kernel``)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """torch.backends.mha's fast path disabled inside, its previous setting restored after
    (a no-op on a torch without the switch)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)
