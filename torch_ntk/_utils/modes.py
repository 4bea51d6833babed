"""The kernel modes "full", "trace" and "diagonal": their names and output shapes.

For a network with n_L outputs, Θ(x, x′) is an n_L × n_L matrix per pair of samples:

- "full"     [N1, N2, n_L, n_L]  Θ_kk′(x1_i, x2_j)
- "trace"    [N1, N2]            (1/n_L) Σ_k Θ_kk(x1_i, x2_j), the mean over outputs (the
                                 scale of one output and of the infinite-width Θ∞)
- "diagonal" [N1, N2, n_L]       Θ_kk(x1_i, x2_j)
"""

from __future__ import annotations

__all__ = ["MODES", "channels", "check_mode", "kernel_shape"]

MODES = ("full", "trace", "diagonal")


def check_mode(function: str, mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else ValueError naming ``function``."""
    if mode not in MODES:
        raise ValueError(f"{function}: mode must be one of {MODES}; got {mode!r}")
    return mode


def channels(mode: str, n_out: int) -> int:
    """Numbers per pair of samples in ``mode``: n_L², 1 or n_L."""
    return n_out * n_out if mode == "full" else (1 if mode == "trace" else n_out)


def kernel_shape(mode: str, n1: int, n2: int, n_out: int) -> tuple[int, ...]:
    """The shape of a kernel between N1 and N2 samples in ``mode``."""
    if mode == "full":
        return (n1, n2, n_out, n_out)
    if mode == "trace":
        return (n1, n2)
    return (n1, n2, n_out)
