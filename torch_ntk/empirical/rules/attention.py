"""The empirical NTK rule of ``nn.MultiheadAttention``: its packed in-projection and its
out-projection, as Linear maps on sequences.

For queries q_t, keys k_s and values v_s (E features), the module computes

    Q = q W_qᵀ + b_q,  K = k W_kᵀ + b_k,  V = v W_vᵀ + b_v   (W_in = [W_q; W_k; W_v], packed)
    O_h = softmax(Q_h K_hᵀ/√d_h + mask) V_h  per head h,   z = O W_oᵀ + b_o,

so with δ the cotangents at z: the out-projection is a Linear on the sequence O (parts
Σ_t δ_t ⊗ O_t and Σ_t δ_t), and the in-projection's three row blocks are Linears on q, k,
v whose cotangents δ_Q, δ_K, δ_V are the vector-Jacobian product of the attention core
(Q, K, V) ↦ O at δ_O = δ W_o — one backward of the core for all n_L outputs at once (the
outputs folded into the batch), recomputed here from the module's inputs. For
self-attention (q, k, v one tensor) the three blocks share the input Gram: one part with
d = [δ_Q, δ_K, δ_V].

The rule recomputes the module's output and compares it with the one the forward produced
(relative 1e-5 in float32, 1e-10 in float64); a mismatch (an option it does not model) is a
ValueError, and the hook engine then differentiates the module by torch.func. Handled:
``batch_first`` either way, ``attn_mask`` [L, S] (bool or float), ``key_padding_mask``
[N, S], ``is_causal`` with its mask. No rule: ``bias_k``/``bias_v``, ``add_zero_attn``,
separate q/k/v projection weights (kdim/vdim ≠ embed_dim), 3-D ``attn_mask``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from . import ntk_rule
from .parts import Direct, ModuleFactors, Outer

__all__ = ["ModuleCall", "attention_coefficients", "multihead_attention"]


@dataclass
class ModuleCall:
    """A module call as the hook engine saw it: positional and keyword arguments (detached)
    and the output that the rule must reproduce (None: not checked)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    output: Optional[Tensor] = None


def attention_coefficients(module: nn.Module) -> tuple[float, float]:
    """(1, 1), 0 for frozen or absent projection parameters."""
    weights = (module.in_proj_weight, module.out_proj.weight)
    biases = (module.in_proj_bias, module.out_proj.bias)
    return (1.0 if any(w is not None and w.requires_grad for w in weights) else 0.0,
            1.0 if any(b is not None and b.requires_grad for b in biases) else 0.0)


def _float_mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, -math.inf)


def _core(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """O [B, L, E] from Q [B, L, E], K, V [B, S, E] and an additive mask [B, 1|H, L, S]."""
    b, t, e = q.shape
    h = module.num_heads
    qh = q.view(b, t, h, -1).transpose(1, 2)
    kh = k.view(b, k.shape[1], h, -1).transpose(1, 2)
    vh = v.view(b, v.shape[1], h, -1).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) @ vh).transpose(1, 2).reshape(b, t, e)


@ntk_rule(nn.MultiheadAttention, coefficients=attention_coefficients, whole_call=True)
def multihead_attention(module: nn.Module, inputs, cotangents: Tensor) -> ModuleFactors:
    """inputs: a :class:`ModuleCall` (query, key, value and masks as the module got them)
    or one tensor x (self-attention ``module(x, x, x)``); cotangents [N, n_L, L, E] at the
    attention output (samples first) → in-projection parts (Outer per input, or one for
    self-attention; Direct for the bias) and out-projection parts."""
    call = inputs if isinstance(inputs, ModuleCall) else ModuleCall((inputs, inputs, inputs))
    if (not module._qkv_same_embed_dim or module.bias_k is not None
            or module.add_zero_attn or module.in_proj_weight is None):
        raise ValueError("multihead_attention rule: only packed projections without "
                         "bias_k/bias_v/add_zero_attn")
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")
    given = dict(zip(names, call.args))
    given.update(call.kwargs)
    q_in, k_in, v_in = given["query"], given["key"], given["value"]
    if q_in.dim() != 3:
        raise ValueError("multihead_attention rule: only batched inputs [N, L, E] / [L, N, E]")
    same = k_in is q_in and v_in is q_in
    if not module.batch_first:
        q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
    n, nl, t, e = cotangents.shape
    s = k_in.shape[1]
    dtype = q_in.dtype
    attn_mask, pad = given.get("attn_mask"), given.get("key_padding_mask")
    if attn_mask is not None and attn_mask.dim() != 2:
        raise ValueError("multihead_attention rule: attn_mask must be [L, S]")
    mask = _float_mask(attn_mask, dtype)
    mask = None if mask is None else mask.view(1, 1, t, s)
    if pad is not None:
        pad = _float_mask(pad, dtype).view(n, 1, 1, s)
        mask = pad if mask is None else mask + pad

    w_in, b_in = module.in_proj_weight, module.in_proj_bias
    w_q, w_k, w_v = w_in.detach().chunk(3)
    b_q, b_k, b_v = (None,) * 3 if b_in is None else b_in.detach().chunk(3)
    w_o, b_o = module.out_proj.weight.detach(), module.out_proj.bias
    lin = torch.nn.functional.linear
    with torch.enable_grad():
        qkv = [lin(x, w, b).detach().requires_grad_()
               for x, w, b in ((q_in, w_q, b_q), (k_in, w_k, b_k), (v_in, w_v, b_v))]
        o = _core(module, *qkv, mask)
        if call.output is not None:
            z = lin(o, w_o, None if b_o is None else b_o.detach())
            got = call.output if module.batch_first else call.output.transpose(0, 1)
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            if not torch.allclose(z, got, rtol=tol, atol=tol * float(got.abs().max())):
                raise ValueError("multihead_attention rule: the recomputed output differs from "
                                 "the module's (an option the rule does not model)")
        # all n_L outputs at once: the core's vjp with the outputs folded into the batch
        rep = [x.repeat_interleave(nl, 0) for x in qkv]
        if mask is not None and mask.shape[0] == n:
            mask = mask.repeat_interleave(nl, 0)
        o_rep = _core(module, *rep, mask)
        delta_o = (cotangents @ w_o).reshape(n * nl, t, e)
        grads = torch.autograd.grad(o_rep, rep, delta_o)
    dq, dk, dv = (g.view(n, nl, 1, -1, e) for g in grads)
    parts = []
    if w_in.requires_grad:
        if same:
            parts.append(Outer(q_in.reshape(n, 1, t, e), torch.cat([dq, dk, dv], -1)))
        else:
            parts += [Outer(x.reshape(n, 1, -1, e), d) for x, d in
                      ((q_in, dq), (k_in, dk), (v_in, dv))]
    if b_in is not None and b_in.requires_grad:
        parts.append(Direct(torch.cat([dq.sum(3), dk.sum(3), dv.sum(3)], -1).view(n, nl, -1)))
    d_out = cotangents.reshape(n, nl, 1, t, e)
    if module.out_proj.weight.requires_grad:
        parts.append(Outer(o.detach().reshape(n, 1, t, e), d_out))
    if b_o is not None and b_o.requires_grad:
        parts.append(Direct(cotangents.sum(2)))
    return ModuleFactors(parts)
