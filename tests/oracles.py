"""Oracles for the tests that are independent of the package's fused ops.

- ``func_ntk``: the finite-width NTK J(x1) J(x2)ᵀ by torch.func (per-sample
  gradients of every parameter), for any model with scalar or vector outputs;
  ``func_ntk_modes`` the same in empirical_ntk's three modes.

Only torch and torch.func are imported: nothing here shares code with torch_ntk.
- ``monte_carlo``: averages of the NNGP f(x)f(x')ᵀ and of the NTK over random
  networks, the estimators of Jacot et al. Prop. 1 and Thm. 1.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap


def func_ntk(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Trace NTK Σ_k Σ_p ∂f_k(x1)/∂θ_p ∂f_k(x2)/∂θ_p, shape [N1, N2] (trainable params)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def f(p, x):
        return functional_call(model, p, (x[None],))[0]

    j1 = vmap(jacrev(f), (None, 0))(params, x1)
    j2 = vmap(jacrev(f), (None, 0))(params, x2)
    out = 0
    for name in params:
        a = j1[name].flatten(2)  # [N1, n_L, P]
        b = j2[name].flatten(2)
        out = out + torch.einsum("ikp,jkp->ij", a, b)
    return out


def func_ntk_modes(model: torch.nn.Module, x1: torch.Tensor, x2=None) -> dict:
    """{"full": [N1, N2, n_L, n_L] Σ_p ∂f_k(x1_i)/∂θ_p ∂f_k′(x2_j)/∂θ_p, "trace": its mean
    over k = k′ [N1, N2], "diagonal": k = k′ kept [N1, N2, n_L]} over the trainable
    parameters, by explicit per-sample Jacobians (x2 None: x1). Outputs of shape [N]
    count as n_L = 1. Dropout is evaluated as in ``model.eval()``."""
    x2 = x1 if x2 is None else x2
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def f(p, x):
        return functional_call(model, p, (x[None],)).reshape(-1)

    try:
        j1 = vmap(jacrev(f), (None, 0))(params, x1)
        j2 = vmap(jacrev(f), (None, 0))(params, x2)
    finally:
        model.train(was_training)
    full = sum(torch.einsum("ikp,jlp->ijkl", j1[n].flatten(2), j2[n].flatten(2)) for n in params)
    diagonal = full.diagonal(dim1=2, dim2=3)
    return {"full": full, "diagonal": diagonal, "trace": diagonal.mean(-1)}


def monte_carlo(make_model, x1, x2, samples: int, want_ntk: bool = True):
    """Means over ``samples`` random networks of f(x1) f(x2)ᵀ / n_L and the NTK / n_L."""
    nngp = 0
    ntk = 0
    for s in range(samples):
        torch.manual_seed(1000 + s)
        model = make_model()
        with torch.no_grad():
            f1, f2 = model(x1), model(x2)
        n_out = f1.shape[1]
        nngp = nngp + f1 @ f2.T / n_out
        if want_ntk:
            ntk = ntk + func_ntk(model, x1, x2) / n_out
    return nngp / samples, (ntk / samples if want_ntk else None)
