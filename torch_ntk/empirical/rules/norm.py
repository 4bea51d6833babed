"""The empirical NTK rule of normalization layers' affine parameters: ``nn.LayerNorm``,
``nn.GroupNorm``, ``nn.BatchNorm1d/2d/3d`` (eval mode: running statistics).

Each computes z = x̂ ⊙ γ + β with x̂ the normalized input (over the last dims for LayerNorm,
over channel groups and positions for GroupNorm, by the running mean and variance for
BatchNorm in eval mode) and γ, β per feature (LayerNorm: per entry of
``normalized_shape``; the others: per channel). The normalization has no parameter, so the
per-sample Jacobians are small and formed directly:

    J_γ,k = Σ_t δ_kt ⊙ x̂_t,   J_β,k = Σ_t δ_kt   (t: the positions sharing γ, β),

two :class:`~torch_ntk.empirical.rules.parts.Direct` parts. BatchNorm in training mode, or
without running statistics, couples the samples of a batch: no rule (the engines run in eval
mode; such a module goes to torch.func).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ntk_rule
from .parts import Direct, ModuleFactors

__all__ = ["batch_norm", "group_norm", "layer_norm", "norm_coefficients"]


def norm_coefficients(module: nn.Module) -> tuple[float, float]:
    """(1, 1), 0 for a frozen or absent affine parameter."""
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    return (1.0 if w is not None and w.requires_grad else 0.0,
            1.0 if b is not None and b.requires_grad else 0.0)


def _affine(module: nn.Module, xhat: Tensor, cotangents: Tensor, features: int) -> ModuleFactors:
    """Direct parts from x̂ [N, *] and δ [N, n_L, *], the parameters' entries being
    ``features`` consecutive entries (LayerNorm: the last dims) or dim 1 (channels)."""
    n, nl = cotangents.shape[:2]
    cw, cb = norm_coefficients(module)
    if isinstance(module, nn.LayerNorm):
        d = cotangents.reshape(n, nl, -1, features)
        x = xhat.reshape(n, 1, -1, features)
    else:  # channels at dim 1: positions after them
        d = cotangents.reshape(n, nl, features, -1).transpose(2, 3)
        x = xhat.reshape(n, 1, features, -1).transpose(2, 3)
    if not (cw or cb):
        return ModuleFactors([])
    # one batched GEMM per (sample, feature): [n_L, T] × [T, (x̂, 1)], reading δ once in
    # its own layout (a strided view; the product and sum in two passes were 1.5–2.5×
    # slower on BatchNorm2d's [8, 10, 64, 1024] cotangents, measured single-threaded)
    cols = ([x[:, 0].transpose(1, 2)] if cw else []) + (
        [torch.ones_like(x[:, 0].transpose(1, 2))] if cb else [])
    sums = torch.matmul(d.permute(0, 3, 1, 2), torch.stack(cols, -1))  # [N, F, n_L, m]
    return ModuleFactors([Direct(sums[..., i].transpose(1, 2).contiguous())
                          for i in range(len(cols))])


def _check(name: str, inputs: Tensor, cotangents: Tensor) -> None:
    if cotangents.shape[2:] != inputs.shape[1:] or cotangents.shape[0] != inputs.shape[0]:
        raise ValueError(f"{name} rule: inputs must be [N, *] and cotangents [N, n_L, *] of the "
                         f"same shape; got {list(inputs.shape)} and {list(cotangents.shape)}")


@ntk_rule(nn.LayerNorm, coefficients=norm_coefficients, positionwise=True)
def layer_norm(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ModuleFactors:
    """x̂ = layer_norm(x) over ``normalized_shape``; γ, β of that shape."""
    _check("layer_norm", inputs, cotangents)
    shape = tuple(module.normalized_shape)
    xhat = F.layer_norm(inputs, shape, eps=module.eps)
    return _affine(module, xhat, cotangents, int(torch.Size(shape).numel()))


@ntk_rule(nn.GroupNorm, coefficients=norm_coefficients)
def group_norm(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ModuleFactors:
    """x̂ = group_norm(x) [N, C, *]; γ, β per channel."""
    _check("group_norm", inputs, cotangents)
    xhat = F.group_norm(inputs, module.num_groups, eps=module.eps)
    return _affine(module, xhat, cotangents, module.num_channels)


@ntk_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, coefficients=norm_coefficients)
def batch_norm(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ModuleFactors:
    """Eval mode: x̂ = (x − running mean)/√(running var + ε) per channel [N, C, *]."""
    _check("batch_norm", inputs, cotangents)
    if module.training or module.running_mean is None:
        raise ValueError("batch_norm rule: only eval mode with running statistics (batch "
                         "statistics couple the samples)")
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    xhat = ((inputs - module.running_mean.view(shape))
            * torch.rsqrt(module.running_var.view(shape) + module.eps))
    return _affine(module, xhat, cotangents, module.num_features)
