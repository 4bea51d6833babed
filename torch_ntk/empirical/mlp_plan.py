"""The structured plan: a lifted MLP's passes giving the factors A_l, D_l of its empirical NTK.

See Jacot et al. §4. For dense layers z_l = W̃_l a_l + b̃_l (W̃ the effective weights) the NTK is

    Θ(x, x′) = Σ_l (c_w,l · ⟨a_l(x), a_l(x′)⟩ + c_b,l) · D_l(x) D_l(x′)ᵀ,

D_l [n_L, m_l] the cotangents of the n_L outputs at layer l's output: D_L = I and
D_l = (D_{l+1} W̃_{l+1}) ⊙ φ′(z_l). A layer whose parameters are all frozen has
c_w = c_b = 0 and is left out. What a dense layer contributes — its factors (A_l, D_l) and
(c_w, c_b) — is the rule of its module type (:mod:`torch_ntk.empirical.rules.linear`,
looked up by ``type(dense.source)``); the plan only runs the passes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..lifting.lift import Dense, LayerSpec, lift
from .._utils.validation import check_batch
from .rules import rule_for
from .rules.linear import DenseFactors

__all__ = ["StructuredPlan", "layer_coefficients"]


class StructuredPlan:
    """The passes of a lifted MLP (its spec bound to modules) that give A_l and D_l.

    Attributes:
        spec: the lifted :class:`~torch_ntk.LayerSpec`.
        denses: its Dense layers (``dense.source`` is the module).
        weight_scales: per dense layer, the factor on W in forward (σ_w/√n_in for an
            NTK-parametrized NTKLinear, else 1): W̃ = scale · W.
        coefs: per dense layer (c_w, c_b), zeroed for frozen weights or bias.
        n_out: n_L. input_features: n_0.
    """

    def __init__(self, spec: LayerSpec):
        spec.require_mlp("StructuredPlan")
        missing = [k for k, d in enumerate(spec.dense_layers) if d.source is None]
        if missing:
            raise ValueError(
                "StructuredPlan: the spec must be lifted from a model (torch_ntk.lift); dense "
                f"layers {missing} are not bound to a module"
            )
        self.spec = spec
        self.denses: tuple[Dense, ...] = spec.dense_layers
        self.weight_scales = [getattr(d.source, "weight_scale", 1.0) for d in self.denses]
        self.rules = [rule_for(d.source) for d in self.denses]
        self.coefs = [rule.coefficients(d.source) for rule, d in zip(self.rules, self.denses)]
        self.n_out = spec.output_features
        self.input_features = spec.input_features

    @classmethod
    def of(cls, model: nn.Module) -> "StructuredPlan":
        """The plan of ``model`` (ValueError, from :func:`torch_ntk.lift`, if it does not lift)."""
        return cls(lift(model))

    def _kept(self) -> list[int]:
        """Indices of the dense layers with a nonzero coefficient."""
        return [l for l, (cw, cb) in enumerate(self.coefs) if cw != 0 or cb != 0]

    def check_input(self, function: str, name: str, x: Tensor) -> Tensor:
        """x as [N, n_0] (flattened when the model starts with nn.Flatten)."""
        return check_batch(function, name, x, features=self.input_features,
                           flatten=self.spec.flatten_input)

    @torch.no_grad()
    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """A_l [N, n_l] and D_l [N, n_L, m_l] of the layers with a nonzero coefficient.

        x: [N, n_0] (see :meth:`check_input`).
        """
        acts: list[Tensor] = []
        dphi: list[Optional[Tensor]] = []  # φ′(z_l) after dense layer l (None: identity)
        a = x
        for layer in self.spec.layers:
            if isinstance(layer, Dense):
                acts.append(a)
                dphi.append(None)
                a = layer.source(a)
            else:
                if layer.name != "identity":
                    dphi[-1] = layer.derivative(a)
                a = layer(a) if layer.source is None else layer.source(a)
        n, nl = x.shape[0], self.n_out
        cot = torch.eye(nl, dtype=x.dtype, device=x.device).expand(n, nl, nl)
        cots: list[Tensor] = [cot]
        for l in range(len(self.denses) - 1, 0, -1):
            weight, scale = self.denses[l].source.weight, self.weight_scales[l]
            m = weight.shape[0]
            g = torch.mm(cot.reshape(n * nl, m), weight).view(n, nl, -1)
            if dphi[l - 1] is not None:
                g.mul_(dphi[l - 1].unsqueeze(1))
            if scale != 1.0:
                g.mul_(scale)
            cot = g
            cots.append(cot)
        cots.reverse()
        factors = [self.rules[l].factors(self.denses[l].source, acts[l], cots[l])
                   for l in self._kept()]
        if not all(isinstance(f, DenseFactors) for f in factors):
            raise TypeError("StructuredPlan: a dense layer's rule must give DenseFactors")
        return [f.inputs for f in factors], [f.cotangents for f in factors]

    def layer_names(self) -> list[str]:
        """Per layer with a choice of contraction, "position: order" (for NTKInfo): none in an
        MLP, whose dense layers all go through the fused op."""
        return []

    def coefficients(self) -> tuple[list[float], list[float]]:
        """(c_w per kept layer, c_b per kept layer), the weights of :meth:`features`."""
        keep = self._kept()
        return [self.coefs[l][0] for l in keep], [self.coefs[l][1] for l in keep]

    def bytes_per_sample(self, itemsize: int) -> int:
        """Bytes of one sample's features (Σ_l n_l + n_L m_l) and of the backward pass."""
        total = sum(self.denses[l].in_features + self.n_out * self.denses[l].out_features
                    for l in self._kept())
        widest = max(d.out_features for d in self.denses)
        return (total + 3 * widest * self.n_out) * itemsize

    def flops_per_pair(self, mode: str) -> float:
        """Floating-point operations of the op per pair of samples in ``mode``."""
        nl = self.n_out
        channels = nl * nl if mode == "full" else nl
        return float(sum(2 * (self.denses[l].in_features + channels * self.denses[l].out_features)
                         for l in self._kept()))


def layer_coefficients(dense) -> tuple[float, float]:
    """(c_w, c_b) of a lifted Dense or Conv layer bound to its module, 0 for a frozen weight
    or bias: the coefficients of the rule of its module type."""
    return rule_for(dense.source).coefficients(dense.source)
