"""Per-module finite-width NTK rules, one file per torch module type (Opacus style).

A module whose output is z = g(θ, a) (a its input, θ its own parameters) contributes to the
empirical NTK of the model it sits in the term

    Θ_module,kk′(x, x′) = Σ_{θ ∈ module} ⟨δ_k(x), ∂z(x)/∂θ⟩ · ⟨δ_k′(x′), ∂z(x′)/∂θ⟩,

δ_k(x) = ∂f_k(x)/∂z the cotangent of output k at the module's output. A rule turns what
the plans already hold — the module, its input for a batch and the cotangents of the n_L
outputs at its output — into **factors** whose contraction is that term, without forming
∂z/∂θ when a cheaper product exists. A rule is a pure function registered for the module
types it handles::

    @ntk_rule(nn.Linear, NTKLinear, coefficients=linear_coefficients)
    def linear(module, inputs, cotangents) -> DenseFactors:
        ...

- ``inputs``: [N, *in_shape], what the module received;
- ``cotangents``: [N, n_L, *out_shape], ∂f_k/∂z for every output k;
- ``coefficients(module) -> (c_w, c_b)``: the weight and bias terms' scales (zero for a
  frozen or absent parameter), known before any pass so a plan can leave a layer out;
- ``input_vjp(module, in_shape, g) -> gᵀ ∂z/∂a`` (optional): a fast transposed map for
  the backward pass of the plans (autograd otherwise).

Every factors object has ``ntk(other, mode, workspace_bytes) -> Tensor`` (other None:
x′ = x) in the shapes of :func:`torch_ntk.empirical_ntk`'s modes; the dense ones are also
fused over layers by :func:`torch_ntk.ops.structured_ntk` in the plans' engines.

The plans (:mod:`~torch_ntk.empirical.mlp_plan`, :mod:`~torch_ntk.empirical.cnn_plan`)
find a layer's rule by the type of the module it was lifted from (``layer.source``).
Adding a module type is one new file here, imported at the bottom of this one, and one
case in ``tests/test_empirical_rules.py`` (a registered type without a case fails there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor, nn

__all__ = ["NTKRule", "NTK_RULES", "ntk_rule", "parameter_coefficients", "rule_for"]


@dataclass(frozen=True)
class NTKRule:
    """A registered rule: ``factors(module, inputs, cotangents)``, ``coefficients(module)``
    and an optional ``input_vjp(module, in_shape, g)`` (see the module docstring)."""

    name: str
    factors: Callable[[nn.Module, Tensor, Tensor], object]
    coefficients: Callable[[nn.Module], tuple[float, float]]
    input_vjp: Optional[Callable[[nn.Module, tuple, Tensor], Tensor]] = None
    hook: Optional[Callable[[nn.Module, Tensor, Tensor], object]] = None
    positionwise: bool = False
    base: Optional[type] = None
    whole_call: bool = False

    @property
    def module_factors(self) -> Callable[[nn.Module, Tensor, Tensor], object]:
        """The hook engine's rule: ``(module, inputs, cotangents) -> ModuleFactors``
        (``rules.parts``), any leading dims; ``hook`` when the plans' ``factors`` is
        another API (Linear, Conv), else ``factors`` itself."""
        return self.hook if self.hook is not None else self.factors


NTK_RULES: dict[type, NTKRule] = {}
"""Module type → its rule, filled by :func:`ntk_rule` when the rule files are imported."""


def ntk_rule(*module_types: type, coefficients: Callable[[nn.Module], tuple[float, float]],
             input_vjp: Optional[Callable] = None, hook: Optional[Callable] = None,
             positionwise: bool = False, whole_call: bool = False):
    """Register the decorated ``factors(module, inputs, cotangents)`` for ``module_types``.

    ``hook``: the hook engine's ``(module, inputs, cotangents) -> ModuleFactors`` when
    ``factors`` returns the plans' factors instead. ``positionwise``: the module treats
    every leading dim of its input alike (Linear, Embedding, LayerNorm), so the hook engine
    may move the samples' dim to the front when a model keeps them elsewhere (``[T, N, d]``).
    ``whole_call``: the rule takes the module's whole call (``rules.attention.ModuleCall``:
    every argument, the output to reproduce) in the module's own layout, and its term covers
    the parameters of the module's submodules too (MultiheadAttention's ``out_proj``).

    Raises ValueError when a type already has a rule (one rule per type: the registry is
    the single place that says what a module means to the empirical NTK).
    """
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                   for t in module_types):
        raise TypeError(f"ntk_rule: give the nn.Module types the rule handles; got "
                        f"{module_types!r}")

    def register(factors):
        for t in module_types:
            if t in NTK_RULES:
                raise ValueError(f"ntk_rule: {t.__name__} already has the rule "
                                 f"{NTK_RULES[t].name!r}; a module type has one rule")
            NTK_RULES[t] = NTKRule(factors.__name__, factors, coefficients, input_vjp, hook,
                                   positionwise, t, whole_call)
        return factors

    return register


def rule_for(module: nn.Module) -> NTKRule:
    """The rule of ``module``'s type (or of its nearest registered base class).

    Raises ValueError naming the type and the registered ones when there is none.
    """
    for t in type(module).__mro__:
        if t in NTK_RULES:
            return NTK_RULES[t]
    known = ", ".join(sorted(t.__name__ for t in NTK_RULES))
    raise ValueError(f"no empirical NTK rule for {type(module).__name__}; registered: {known} "
                     "(method='hooks', 'jacobian' or 'ntk_vp' computes the kernel of any model)")


def parameter_coefficients(module: nn.Module, fan_in: int) -> tuple[float, float]:
    """(c_w, c_b) of a module computing z = s_w·(W ⋆ a) + s_b·b: ∂z/∂W = s_w·a and
    ∂z/∂b = s_b, so the weight term is c_w·⟨a, a′⟩·⟨δ, δ′⟩ with c_w = s_w² and the bias
    term c_b·⟨Σδ, Σδ′⟩ with c_b = s_b².

    NTK parametrization (``module.parametrization == "ntk"``): s_w² = σ_w²/fan_in,
    s_b² = σ_b²; otherwise (nn.Linear, nn.Conv, standard parametrization) 1 and 1. A
    parameter that is frozen (``requires_grad=False``) or absent contributes 0.
    """
    ntk = getattr(module, "parametrization", "standard") == "ntk"
    weight_on = module.weight.requires_grad
    bias_on = module.bias is not None and module.bias.requires_grad
    cw = module.weight_std**2 / fan_in if ntk else 1.0
    cb = module.bias_std**2 if ntk else 1.0
    return (cw if weight_on else 0.0, cb if bias_on else 0.0)


# The rule files register themselves on import (after the decorator above exists).
from . import conv, linear  # noqa: E402,F401
from . import attention, conv_transpose, embedding, norm  # noqa: E402,F401
