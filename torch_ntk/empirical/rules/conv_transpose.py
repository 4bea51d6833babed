"""The empirical NTK rule of transposed convolutions: ``nn.ConvTranspose1d/2d/3d``.

z = conv_transpose(a, W) + b with W [C_in, C_out/G, *k] writes a_p·W_q at output position
y = p·s + q·d − pad, so the weight's per-sample Jacobian reads the cotangent δ at those
positions: with δ̃_p the patch of δ (padded by ``padding``, window k, stride s, dilation d)
at input position p — the adjoint's view, one patch per input position —

    J_k = Σ_p δ̃_kp ⊗ a_p,    Θ_kk′ = Σ_{p,p′} ⟨a_p, a′_p′⟩⟨δ̃_kp, δ̃′_k′p′⟩ + ⟨Σδ_k, Σδ′_k′⟩,

an :class:`~torch_ntk.empirical.rules.parts.Outer` part per group (a = inputs, d = cotangent
patches) and the bias' Σ_y δ_y. ``output_padding`` only adds output positions the patches
never start at; the number of patches is the input's positions.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import ntk_rule, parameter_coefficients
from .conv import window_patches
from .parts import Direct, ModuleFactors, Outer

__all__ = ["conv_transpose", "conv_transpose_coefficients"]


def conv_transpose_coefficients(module: nn.Module) -> tuple[float, float]:
    """(1, 1), 0 for a frozen or absent parameter (standard parametrization)."""
    return parameter_coefficients(module, 1)


@ntk_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
          coefficients=conv_transpose_coefficients)
def conv_transpose(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ModuleFactors:
    """inputs [N, C_in, *in], cotangents [N, n_L, C_out, *out] → per group the Outer part
    (a [N, G, P_in, C_in/G], δ̃ [N, n_L, G, P_in, C_out/G·|Q|]) and the bias part."""
    dims = len(module.kernel_size)
    n, nl = cotangents.shape[:2]
    if inputs.dim() != dims + 2 or cotangents.dim() != dims + 3 or inputs.shape[0] != n:
        raise ValueError(f"conv_transpose rule: inputs must be [N, C_in, *{dims} dims] and "
                         f"cotangents [N, n_L, C_out, *{dims} dims]; got {list(inputs.shape)} "
                         f"and {list(cotangents.shape)}")
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ValueError(f"conv_transpose rule: padding={module.padding!r}, padding_mode="
                         f"{module.padding_mode!r} (only integer zero padding)")
    cw, cb = conv_transpose_coefficients(module)
    g, c_in, c_out = module.groups, inputs.shape[1], cotangents.shape[2]
    parts = []
    if cw:
        pairs = tuple((p, p) for p in module.padding)
        pat = window_patches(cotangents.flatten(0, 1), tuple(module.kernel_size),
                             tuple(module.stride), tuple(module.dilation), pairs)
        p, q = pat.shape[1], pat.shape[3]
        if p != inputs[0, 0].numel():
            raise ValueError(f"conv_transpose rule: {p} cotangent patches for "
                             f"{inputs[0, 0].numel()} input positions")
        d = pat.reshape(n, nl, p, g, c_out // g * q).permute(0, 1, 3, 2, 4)
        a = inputs.reshape(n, g, c_in // g, p).transpose(2, 3)
        parts.append(Outer(a, d))
    if cb:
        parts.append(Direct(cotangents.flatten(3).sum(3)))
    return ModuleFactors(parts)
