"""Oracles for the tests that are independent of the package's fused ops.

- ``func_ntk``: the finite-width NTK J(x1) J(x2)ᵀ by torch.func (per-sample
  gradients of every parameter), for any model with scalar or vector outputs.
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
