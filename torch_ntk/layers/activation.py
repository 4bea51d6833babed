"""Activations and kernel no-ops: lifting, infinite-width rule, op encoding.

The descriptor is :class:`torch_ntk.activations.Activation` (the registry mirrored in
csrc). Infinite width, position by position (planes or diagonals alike):

    K ← E[φ(u)φ(v)],   T ← E[φ′(u)φ′(v)] ⊙ T
    with Var u = K(x, x)_{p,p} (``state.var1``), Var v = K(x′, x′)_{p′,p′} (``state.var2``),
    Cov(u, v) = K_{p,p′}

(closed forms where the activation has one; the numeric Hermite series of
``torch_ntk.layers.elementwise`` for activations no fused op computes, and for ELU/SELU
when ``state.series``; else Gauss–Hermite quadrature of ``state.degree`` in chunks).
``nn.Identity`` and ``nn.Dropout`` lift to nothing. Right
after an affine LayerNorm the gain's NTK term changes the rule
(``torch_ntk.layers.layernorm``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..activations import Activation, from_module, gaussian_expectations, module_types
from .base import LiftOptions, Position, kernel_rule, lifts, op_encoding
from .elementwise import expectations as numeric_expectations
from .elementwise import needs_numeric, numeric_activation
from .layernorm import HOMOGENEOUS
from .state import KernelState

__all__ = ["ACTIVATION", "QUADRATURE_ELEMENTS", "expectations"]

ACTIVATION = 1  # the fused CNN op's layer code
QUADRATURE_ELEMENTS = 1 << 22  # elements × degree² per quadrature chunk


@lifts(*module_types())
def lift_activation(position: Position, module: nn.Module, options: LiftOptions) -> Activation:
    if isinstance(module, nn.Softplus) and module.threshold != 20:
        return numeric_activation(module)  # the kink at threshold/β: the numeric series
    return from_module(module)


@lifts(nn.Identity, nn.Dropout)
def lift_no_op(position: Position, module: nn.Module, options: LiftOptions) -> None:
    return None


def expectations(act: Activation, q11: Tensor, q22: Tensor, q12: Tensor, degree: int,
                 force_quadrature: bool, series: bool = False) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) for Var u = q11, Var v = q22, Cov = q12 (broadcast)."""
    if needs_numeric(act, series):
        return numeric_expectations(act, q11, q22, q12, force_quadrature)
    if act.has_closed_form and not force_quadrature:
        return act.closed_form(q11, q22, q12)
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    q11, q22, q12 = (t.expand(shape).reshape(-1) for t in (q11, q22, q12))
    step = max(1, QUADRATURE_ELEMENTS // (degree * degree))
    parts = [gaussian_expectations(act, q11[i:i + step], q22[i:i + step], q12[i:i + step], degree)
             for i in range(0, q12.numel(), step)]
    return (torch.cat([p[0] for p in parts]).reshape(shape),
            torch.cat([p[1] for p in parts]).reshape(shape))


@kernel_rule(Activation, variances=True)
def activation_kernel(layer: Activation, state: KernelState) -> KernelState:
    """K ← E[φ(u)φ(v)], T ← E[φ′(u)φ′(v)] ⊙ T (module doc); after an affine LayerNorm
    (``state.gain_term``, a ReLU-family φ) T ← E[φ′φ′] ⊙ (T − K) + E[φφ]."""
    e_phi, e_dphi = expectations(layer, state.var1, state.var2, state.nngp, state.degree,
                                 state.force_quadrature, state.series)
    if state.gain_term:
        if layer.name not in HOMOGENEOUS:
            raise ValueError(f"analytic_kernels: the activation {layer.name!r} after an affine "
                             f"LayerNorm has no exact rule (only {HOMOGENEOUS})")
        return state.replace(nngp=e_phi, ntk=e_dphi * (state.ntk - state.nngp) + e_phi)
    return state.replace(nngp=e_phi, ntk=e_dphi * state.ntk)


@op_encoding(Activation)
def activation_encoding(layer: Activation) -> Optional[tuple[int, list[int], list[float]]]:
    """ACTIVATION | act_id | param; None (the walker runs) for an activation without an
    id (``torch_ntk.layers.elementwise``)."""
    if layer.id < 0:
        return None
    return ACTIVATION, [layer.id], [float(layer.param)]
