"""The passes of a lifted CNN that give each layer's factors of its structured empirical NTK.

One forward pass keeps every Conv/Dense layer's input and every activation's φ′(z); one
backward pass carries the cotangents of all n_L outputs at once, δ [N·n_L, ...], through
each layer (a layer's rule gives a fast ``input_vjp``, e.g. the transposed convolution;
autograd otherwise). Each parametrized layer's factors are then those of the rule of its
module type (:mod:`torch_ntk.empirical.rules`, looked up by ``type(layer.source)``): a
conv layer's in the contraction order its FLOP model picks
(:func:`~torch_ntk.empirical.rules.conv.choose_order`), the dense layers after the readout
as the inputs and cotangents the fused :func:`torch_ntk.ops.structured_ntk` takes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..lifting.lift import Conv, Dense, GlobalAvgPool, LayerSpec, lift
from .rules import rule_for
from .rules.conv import (ORDERS, ConvFactors, choose_order, contract, conv_layer_ntk,
                         order_bytes, symmetric_gram)
from .rules.linear import DenseFactors

# The conv factor maths lives in rules.conv; its names stay importable from here.
__all__ = ["ORDERS", "ConvFactors", "ConvStructuredPlan", "choose_order", "contract",
           "conv_layer_ntk", "symmetric_gram"]


def _apply(layer, a: Tensor) -> Tensor:
    """The layer's output (global pooling flattened to [N, C], as the Flatten after it does)."""
    if layer.source is None:
        return layer(a)
    out = layer.source(a)
    return out.flatten(1) if isinstance(layer, GlobalAvgPool) else out


def _input_vjp(layer, shape: tuple, g: Tensor) -> Tensor:
    """gᵀ ∂layer(a)/∂a for a layer linear in a (conv, pooling, flatten, dense), batched;
    shape: one sample's input shape. The rule's ``input_vjp`` of the layer's module type
    when it has one (the transposed convolution), else autograd through the layer."""
    rule = _rule_of(layer)
    if rule is not None and rule.input_vjp is not None:
        return rule.input_vjp(layer.source, shape, g)
    shape = (g.shape[0], *shape)
    with torch.enable_grad():
        a = torch.zeros(shape, dtype=g.dtype, device=g.device, requires_grad=True)
        (grad,) = torch.autograd.grad(_apply(layer, a), a, g)
    return grad


def _rule_of(layer):
    """The empirical rule of a layer's module, None for a layer without parameters."""
    module = layer.source
    if module is None or next(module.parameters(recurse=False), None) is None:
        return None
    return rule_for(module)


class ConvStructuredPlan:
    """The passes of a lifted CNN (its spec bound to modules) that give each layer's factors.

    Attributes:
        spec: the lifted CNN :class:`~torch_ntk.LayerSpec`.
        weighted, convs: its Conv and Dense layers, and its Conv layers (in order).
        coefs, conv_coefs: per layer of ``weighted`` / ``convs``, (c_w, c_b), zeroed for
            frozen parameters.
        n_out: n_L.
        orders: per Conv layer, its contraction order ("gradients" or "grams"); set by the
            block engine (:func:`choose_order`) before :meth:`features` runs.
        forced_order: None (choose by the FLOP model) or one of :data:`ORDERS` for every
            conv layer (a class attribute, for tests and benchmarks).
    """

    forced_order: Optional[str] = None

    def __init__(self, spec: LayerSpec):
        if spec.is_mlp:
            raise ValueError("ConvStructuredPlan: this is an MLP spec; use StructuredPlan")
        unbound = [k for k, layer in enumerate(spec.layers)
                   if isinstance(layer, (Conv, Dense)) and layer.source is None]
        if unbound:
            raise ValueError(
                "ConvStructuredPlan: the spec must be lifted from a model (torch_ntk.lift); "
                f"layers {unbound} are not bound to a module")
        self.spec = spec
        self.weighted = [layer for layer in spec.layers if isinstance(layer, (Conv, Dense))]
        self.convs = [layer for layer in self.weighted if isinstance(layer, Conv)]
        self.rules = {id(layer): rule_for(layer.source) for layer in self.weighted}
        self.coefs = [self._coefficients(layer) for layer in self.weighted]
        self.conv_coefs = [self._coefficients(layer) for layer in self.convs]
        self.n_out = spec.output_features
        self.orders = ["gradients"] * len(self.convs)
        self.shapes: dict = {}

    @classmethod
    def of(cls, model: nn.Module) -> "ConvStructuredPlan":
        return cls(lift(model))

    def _coefficients(self, layer) -> tuple[float, float]:
        """(c_w, c_b) of a parametrized layer, by the rule of its module type."""
        return self.rules[id(layer)].coefficients(layer.source)

    def check_input(self, function: str, name: str, x: Tensor) -> Tensor:
        """x as [N, C, H, W] or [N, C, L], with the shape the model needs."""
        x = self.spec.check_input(function, name, x)
        self._record_shapes(x[:1])
        return x

    @torch.no_grad()
    def _record_shapes(self, x: Tensor) -> None:
        """Per Conv layer (C_out, C_in|Q|, P) for inputs shaped like x."""
        a = x
        for layer in self.spec.layers:
            if isinstance(layer, Conv):
                a = layer.source(a)
                self.shapes[id(layer)] = (layer.out_channels, layer.fan_in, a[0, 0].numel())
            else:
                a = _apply(layer, a)

    def conv_shapes(self) -> list[tuple[int, int, int]]:
        """Per Conv layer (C_out, C_in|Q|, P) (after :meth:`check_input`)."""
        return [self.shapes[id(layer)] for layer in self.convs]

    def kept(self) -> list[int]:
        """Indices (into ``weighted``) of the layers with a nonzero coefficient."""
        return [l for l, (cw, cb) in enumerate(self.coefs) if cw != 0 or cb != 0]

    def dense_coefficients(self) -> tuple[list[float], list[float]]:
        """(c_w, c_b) of the kept dense layers, the weights of :meth:`features`' dense part."""
        keep = [l for l in self.kept() if isinstance(self.weighted[l], Dense)]
        return [self.coefs[l][0] for l in keep], [self.coefs[l][1] for l in keep]

    def bytes_per_sample(self, itemsize: int, orders: list[str]) -> int:
        """Bytes of one sample's factors in ``orders`` and of the backward pass."""
        total, widest = 0, 0
        for layer, (cw, cb) in zip(self.weighted, self.coefs):
            if isinstance(layer, Dense):
                widest = max(widest, layer.out_features)
                if cw or cb:
                    total += (layer.in_features + self.n_out * layer.out_features) * itemsize
        for k, (c_out, patch, positions) in enumerate(self.conv_shapes()):
            widest = max(widest, c_out * positions * 2)
            if any(self.conv_coefs[k]):
                total += order_bytes(orders[k], self.n_out, c_out, patch, positions, itemsize)
                total += positions * patch * itemsize  # the patches while computing
        return total + 3 * widest * self.n_out * itemsize

    @torch.no_grad()
    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[ConvFactors]]:
        """(A_l, D_l of the kept dense layers, the kept conv layers' :class:`ConvFactors` in
        their ``orders``), each from the rule of the layer's module type.

        x: [N, C, ...]. One forward pass keeps each Conv/Dense input and each activation's
        φ′(z); one backward pass for the N·n_L output directions at once (each linear layer's
        input vjp by its rule's ``input_vjp`` or autograd) gives the cotangents
        δ_l [N, n_L, C_out, P] / [N, n_L, m]; each kept layer's rule then gives its factors.
        """
        n, nl = x.shape[0], self.n_out
        inputs, in_shapes, dphi = {}, [], {}
        a = x
        for k, layer in enumerate(self.spec.layers):
            in_shapes.append(tuple(a.shape[1:]))
            if id(layer) in self.rules:  # a layer with parameters: its rule needs its input
                inputs[k] = a
            elif hasattr(layer, "derivative") and layer.name != "identity":
                dphi[k] = layer.derivative(a)
            a = _apply(layer, a)
        g = torch.eye(nl, dtype=x.dtype, device=x.device).repeat(n, 1)  # [N·n_L, n_L]
        keep = {id(self.weighted[l]) for l in self.kept()}
        cots = {}
        for k in range(len(self.spec.layers) - 1, -1, -1):
            layer = self.spec.layers[k]
            if k in dphi:
                g = (g.view(n, nl, *g.shape[1:]) * dphi[k].unsqueeze(1)).view(g.shape)
                continue
            if id(layer) in keep:
                cots[k] = g.view(n, nl, *g.shape[1:])
            if k == 0 or layer.source is None:
                continue
            if not any(id(earlier) in keep for earlier in self.spec.layers[:k]):
                break  # nothing before needs cotangents
            g = _input_vjp(layer, in_shapes[k], g)
        acts, dcots, convs = [], [], []
        conv_index = 0
        for k, layer in enumerate(self.spec.layers):
            if isinstance(layer, Conv):
                order = self.orders[conv_index]
                conv_index += 1
            if k not in cots:
                continue
            factors = self.rules[id(layer)].factors(layer.source, inputs[k], cots[k])
            if isinstance(factors, DenseFactors):  # contracted by the fused op, all at once
                acts.append(factors.inputs)
                dcots.append(factors.cotangents)
            else:
                convs.append(factors.in_order(order))
        return acts, dcots, convs

    def layer_names(self) -> list[str]:
        """Per Conv layer with a nonzero coefficient, "position: order" (for NTKInfo)."""
        names = []
        for k, layer in enumerate(self.convs):
            if any(self.conv_coefs[k]):
                names.append(f"{layer.position}: {self.orders[k]}")
        return names
