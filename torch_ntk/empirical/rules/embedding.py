"""The empirical NTK rule of ``nn.Embedding``: token equality times the cotangent Gram.

z_t = W[id_t] (W [V, D]): the per-sample Jacobian of W is J_k = Σ_t d_kt ⊗ e_{id_t}
(e the one-hot of the token), so

    Θ_kk′(x, x′) = Σ_{t,s} [id_t = id′_s] · ⟨d_kt, d′_k′s⟩,

computed from the ids' equality and the cotangent Gram ("grams", never the one-hot), or by
scattering the cotangents into their tokens' rows ("gradients", [N, n_L, V·D]). Tokens equal
to ``padding_idx`` get no gradient (as in torch's backward). ``max_norm`` (which rewrites W
during the forward) and ``scale_grad_by_freq`` (not a derivative) have no rule: the hook
engine differentiates such a module by torch.func.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import ntk_rule
from .parts import ModuleFactors, Tokens

__all__ = ["embedding", "embedding_coefficients"]


def embedding_coefficients(module: nn.Module) -> tuple[float, float]:
    """(1, 0) when the table is trainable, else (0, 0)."""
    return (1.0 if module.weight.requires_grad else 0.0, 0.0)


@ntk_rule(nn.Embedding, coefficients=embedding_coefficients, positionwise=True)
def embedding(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ModuleFactors:
    """inputs: integer ids [N, *]; cotangents [N, n_L, *, D] → a Tokens part."""
    if module.max_norm is not None or module.scale_grad_by_freq:
        raise ValueError("embedding rule: max_norm and scale_grad_by_freq have no rule")
    n, nl = cotangents.shape[:2]
    if inputs.is_floating_point() or cotangents.shape[2:-1] != inputs.shape[1:]:
        raise ValueError(f"embedding rule: inputs must be integer ids [N, *] and cotangents "
                         f"[N, n_L, *, D]; got {inputs.dtype} {list(inputs.shape)} and "
                         f"{list(cotangents.shape)}")
    if not module.weight.requires_grad:
        return ModuleFactors([])
    ids = inputs.reshape(n, -1).long()
    d = cotangents.reshape(n, nl, ids.shape[1], -1)
    if module.padding_idx is not None:
        d = d * (ids != module.padding_idx).to(d.dtype).view(n, 1, -1, 1)
    return ModuleFactors([Tokens(ids, d, module.num_embeddings)])
