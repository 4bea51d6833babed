"""The structured finite-width NTK of a lifted CNN: factors per layer and the conv contractions.

See Arora et al. 2019 (the structured conv NTK, Novak et al. 2022). With δ_p = ∂f_k/∂z_p the
cotangents of a conv layer's output at position p and π_p the input patch it reads,

    Θ^W(x, x′) = c_w · Σ_{p,p′} ⟨δ_p(x), δ_p′(x′)⟩ · ⟨π_p(x), π_p′(x′)⟩
    Θ^b(x, x′) = c_b · ⟨Σ_p δ_p(x), Σ_p′ δ_p′(x′)⟩

computed in one of two orders per layer, chosen by :func:`choose_order` from a FLOP model:
``"gradients"`` (a) per-sample weight gradients J(x) = Σ_p δ_p(x) ⊗ π_p(x), then one Gram
GEMM; ``"grams"`` (b) the patch Gram times the cotangent Gram, summed over (p, p′). The
dense layers after the readout go through the fused :func:`torch_ntk.ops.structured_ntk`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lifting.lift import Conv, Dense, GlobalAvgPool, LayerSpec, lift
from .mlp_plan import layer_coefficients

__all__ = ["ORDERS", "ConvFactors", "ConvStructuredPlan", "choose_order", "contract",
           "conv_layer_ntk", "symmetric_gram"]

ORDERS = ("gradients", "grams")


def symmetric_gram(a: Tensor, tiles: int = 6, min_tile: int = 512) -> Tensor:
    """a aᵀ for a [..., M, K], exactly symmetric. With M ≥ 2·min_tile, from the tiles on and
    above the diagonal (about (t + 1)/(2t) of the products for t tiles per side); smaller
    M in one product (tiles of a few rows against a long K run far below a GEMM's rate:
    measured 4× slower at M = 256, K = 147,584 in ``torch-ntk bench cnn_structured``)."""
    m = a.shape[-2]
    t = max(1, min(tiles, m // min_tile))
    bounds = [m * i // t for i in range(t + 1)]
    out = a.new_empty((*a.shape[:-2], m, m))
    for i in range(t):
        rows = slice(bounds[i], bounds[i + 1])
        for j in range(i, t):
            cols = slice(bounds[j], bounds[j + 1])
            block = torch.matmul(a[..., rows, :], a[..., cols, :].transpose(-1, -2))
            if j != i:
                out[..., rows, cols] = block
                out[..., cols, rows] = block.transpose(-1, -2)
            else:  # a diagonal tile rounds asymmetrically: mirror its upper triangle
                upper = torch.triu(block)
                out[..., rows, cols] = upper.add_(torch.triu(block, 1).transpose(-1, -2))
    return out


def contract(j1, j2, mode: str) -> Tensor:
    """Σ_p J1[i, k, p] J2[j, k′, p] in ``mode`` ("trace": the mean over k = k′); J [n, n_L, p],
    or a list of such parts (concatenated along p: their contractions add).

    j2 None means j2 = j1: the result is then exactly symmetric and about half the
    products are computed (:func:`symmetric_gram`).
    """
    if isinstance(j1, (list, tuple)):
        parts = [contract(a, None if j2 is None else b, mode)
                 for a, b in zip(j1, j1 if j2 is None else j2)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    n1, nl, p = j1.shape
    if j2 is None:
        if mode == "trace":
            return symmetric_gram(j1.reshape(n1, nl * p)).div_(nl)
        if mode == "diagonal":
            return symmetric_gram(j1.transpose(0, 1)).permute(1, 2, 0)
        return symmetric_gram(j1.reshape(n1 * nl, p)).view(n1, nl, n1, nl).permute(0, 2, 1, 3)
    n2 = j2.shape[0]
    if mode == "trace":
        return torch.mm(j1.reshape(n1, nl * p), j2.reshape(n2, nl * p).t()).div_(nl)
    if mode == "diagonal":
        return torch.bmm(j1.transpose(0, 1), j2.transpose(0, 1).transpose(1, 2)).permute(1, 2, 0)
    full = torch.mm(j1.reshape(n1 * nl, p), j2.reshape(n2 * nl, p).t())
    return full.view(n1, nl, n2, nl).permute(0, 2, 1, 3)


class ConvFactors:
    """One conv layer's factors for a chunk of samples, in the layer's contraction order.

    ``order == "gradients"``: ``jac``, a list of the per-sample gradients
    √c_w·Σ_p δ_p ⊗ π_p [N, n_L, C_out·C_in|Q|] (when c_w ≠ 0) and √c_b·Σ_p δ_p
    [N, n_L, C_out] (when c_b ≠ 0), whose contractions add.
    ``order == "grams"``: ``patches`` [N, P, C_in|Q|], ``cot`` [N, n_L, C_out, P] and
    ``bias`` [N, n_L, C_out] (Σ_p δ_p), with the coefficients ``cw``, ``cb``.
    """

    def __init__(self, order: str, cw: float, cb: float, jac: Optional[Tensor] = None,
                 patches: Optional[Tensor] = None, cot: Optional[Tensor] = None,
                 bias: Optional[Tensor] = None):
        self.order, self.cw, self.cb = order, cw, cb
        self.jac, self.patches, self.cot, self.bias = jac, patches, cot, bias

    def __iter__(self):
        """Its tensors (for memory accounting)."""
        return iter([t for t in (*(self.jac or ()), self.patches, self.cot, self.bias)
                     if t is not None])


def channels_of(mode: str, n_out: int) -> int:
    """Output channels per pair of samples: n_L² ("full") or n_L."""
    return n_out * n_out if mode == "full" else n_out


def order_flops(order: str, n1: int, n2: int, n_out: int, mode: str, c_out: int, patch: int,
                positions: int) -> float:
    """Floating-point operations of one conv layer's contraction for an n1 × n2 block.

    (a) "gradients": 2(n1 + n2)·n_L·P·C_out·C_in|Q| for the gradients, 2·n1·n2·c·C_out·C_in|Q|
    for the Gram; (b) "grams": 2·n1·n2·P²·(C_in|Q| + c·C_out) plus the products (c: n_L² in
    "full", else n_L).
    """
    ch = channels_of(mode, n_out)
    if order == "gradients":
        return 2.0 * ((n1 + n2) * n_out * positions * c_out * patch
                      + n1 * n2 * ch * c_out * (patch + 1))
    return 2.0 * n1 * n2 * positions**2 * (patch + ch * c_out + ch)


def order_bytes(order: str, n_out: int, c_out: int, patch: int, positions: int,
                itemsize: int) -> int:
    """Bytes of one sample's factors of a conv layer in ``order``."""
    if order == "gradients":
        return n_out * c_out * (patch + 1) * itemsize
    return (positions * patch + n_out * c_out * (positions + 1)) * itemsize


def choose_order(n1: int, n2: int, n_out: int, mode: str, c_out: int, patch: int,
                 positions: int) -> str:
    """The cheaper contraction order (by :func:`order_flops`) of one conv layer."""
    fa, fb = (order_flops(o, n1, n2, n_out, mode, c_out, patch, positions) for o in ORDERS)
    return "gradients" if fa <= fb else "grams"


def conv_layer_ntk(f1: ConvFactors, f2: Optional[ConvFactors], mode: str,
                   workspace_bytes: int = 1 << 28) -> Tensor:
    """One conv layer's Θ(x1, x2) from its factors (both in the same order), in ``mode``;
    f2 None for x2 = x1 (the "gradients" order then computes half the Gram).

    The "grams" order holds an [r, N2, P, P] patch Gram and a cotangent Gram c times as
    large for r rows of x1 at a time, r chosen so that both fit ``workspace_bytes``.
    """
    if f1.order == "gradients":
        return contract(f1.jac, None if f2 is None else f2.jac, mode)
    f2 = f1 if f2 is None else f2
    n1, nl, c_out, p = f1.cot.shape
    n2, q = f2.cot.shape[0], f2.cot.shape[3]
    ch = channels_of(mode, nl)
    total = contract(f1.bias, f2.bias, mode).mul_(f1.cb) if f1.cb else None
    if not f1.cw:
        return total
    rows = max(1, min(n1, workspace_bytes // max(1, (1 + 2 * ch) * n2 * p * q
                                                   * f1.cot.element_size())))
    pat2 = f2.patches.reshape(n2 * q, -1).t()  # [C_in|Q|, N2·P′]
    if mode == "trace":  # the right factor of the cotangent Gram, once
        b = f2.cot.permute(0, 3, 1, 2).reshape(n2 * q, nl * c_out).t()
    elif mode == "diagonal":
        b = f2.cot.permute(1, 2, 0, 3).reshape(nl, c_out, n2 * q)
    else:
        b = f2.cot.permute(2, 0, 1, 3).reshape(c_out, n2 * nl * q)
    parts = []
    for r0 in range(0, n1, rows):
        r1 = min(n1, r0 + rows)
        r = r1 - r0
        gp = torch.mm(f1.patches[r0:r1].reshape(r * p, -1), pat2).view(r, p, n2, q)
        d1 = f1.cot[r0:r1]
        if mode == "trace":
            gd = torch.mm(d1.permute(0, 3, 1, 2).reshape(r * p, nl * c_out), b)
            part = torch.einsum("ipjq,ipjq->ij", gd.view(r, p, n2, q), gp).div_(nl)
        elif mode == "diagonal":
            gd = torch.bmm(d1.permute(1, 0, 3, 2).reshape(nl, r * p, c_out), b)
            part = torch.einsum("kipjq,ipjq->ijk", gd.view(nl, r, p, n2, q), gp)
        else:
            gd = torch.mm(d1.permute(0, 1, 3, 2).reshape(r * nl * p, c_out), b)
            part = torch.einsum("ikpjlq,ipjq->ijkl", gd.view(r, nl, p, n2, nl, q), gp)
        parts.append(part)
    weight = torch.cat(parts).mul_(f1.cw)
    return weight if total is None else total.add_(weight)


def _pad(layer: Conv, a: Tensor) -> Tensor:
    """a padded as the layer pads it (zeros or circular)."""
    pad = [v for pair in reversed(layer.padding) for v in pair]  # last dim first
    if not any(pad):
        return a
    return F.pad(a, pad, mode="circular" if layer.padding_mode == "circular" else "constant")


def _patches(layer: Conv, a: Tensor) -> Tensor:
    """π [N, P, C_in·|Q|] (C_in major, as the weight): the padded input's patch at each output
    position (1-D as height 1), gathered from a strided view of a [N, C_in, ...] (one copy;
    ``F.unfold``'s CPU im2col took 5 s per layer here on the width-128 case of
    ``torch-ntk bench cnn_structured``, 15× this)."""
    a = _pad(layer, a)
    k, s, d = layer.kernel_size, layer.stride, layer.dilation
    if layer.dims == 1:
        a, k, s, d = a.unsqueeze(2), (1, *k), (1, *s), (1, *d)
    span = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    view = a.unfold(2, span[0], s[0]).unfold(3, span[1], s[1])[..., ::d[0], ::d[1]]
    n, c, h, w = view.shape[:4]
    return view.permute(0, 2, 3, 1, 4, 5).reshape(n, h * w, c * k[0] * k[1])


def _conv_input_vjp(layer: Conv, shape: tuple, g: Tensor) -> Tensor:
    """gᵀ ∂conv(a)/∂a, g [B, C_out, ...] → [B, *shape]: the transposed convolution on the
    padded input, then the padding's adjoint (a crop, or the wrap-around sums of circular)."""
    module = layer.source
    weight = module.weight * getattr(module, "weight_scale", 1.0)
    pad = [v for pair in reversed(layer.padding) for v in pair]
    padded = list(g.shape[:2]) + [size + sum(p) for size, p in zip(shape[1:], layer.padding)]
    padded[1] = shape[0]
    grad_input = torch.nn.grad.conv1d_input if layer.dims == 1 else torch.nn.grad.conv2d_input
    gp = grad_input(padded, weight, g, layer.stride, 0, layer.dilation)
    if not any(pad):
        return gp
    if layer.padding_mode == "zeros":
        crop = [slice(None), slice(None)] + [slice(p[0], p[0] + size)
                                            for size, p in zip(shape[1:], layer.padding)]
        return gp[tuple(crop)]
    with torch.enable_grad():
        a = torch.zeros((g.shape[0], *shape), dtype=g.dtype, device=g.device,
                        requires_grad=True)
        (grad,) = torch.autograd.grad(_pad(layer, a), a, gp)
    return grad


def _apply(layer, a: Tensor) -> Tensor:
    """The layer's output (global pooling flattened to [N, C], as the Flatten after it does)."""
    if layer.source is None:
        return layer(a)
    out = layer.source(a)
    return out.flatten(1) if isinstance(layer, GlobalAvgPool) else out


def _input_vjp(layer, shape: tuple, g: Tensor) -> Tensor:
    """gᵀ ∂layer(a)/∂a for a layer linear in a (conv, pooling, flatten, dense), batched;
    shape: one sample's input shape."""
    if isinstance(layer, Conv):
        return _conv_input_vjp(layer, shape, g)
    shape = (g.shape[0], *shape)
    with torch.enable_grad():
        a = torch.zeros(shape, dtype=g.dtype, device=g.device, requires_grad=True)
        (grad,) = torch.autograd.grad(_apply(layer, a), a, g)
    return grad


class ConvStructuredPlan:
    """The passes of a lifted CNN (its spec bound to modules) that give each layer's factors.

    Attributes:
        spec: the lifted CNN :class:`~torch_ntk.arch.LayerSpec`.
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
        self.coefs = [layer_coefficients(layer) for layer in self.weighted]
        self.conv_coefs = [layer_coefficients(layer) for layer in self.convs]
        self.n_out = spec.output_features
        self.orders = ["gradients"] * len(self.convs)
        self.shapes: dict = {}

    @classmethod
    def of(cls, model: nn.Module) -> "ConvStructuredPlan":
        return cls(lift(model))

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
        """(A_l, D_l of the kept dense layers, the kept conv layers' :class:`ConvFactors`).

        x: [N, C, ...]. One forward pass keeps each Conv/Dense input and each activation's
        φ′(z); one backward pass for the N·n_L output directions at once (each linear layer's
        input vjp by autograd) gives the cotangents δ_l [N, n_L, C_out, P] / [N, n_L, m].
        """
        n, nl = x.shape[0], self.n_out
        inputs, in_shapes, dphi = {}, [], {}
        a = x
        for k, layer in enumerate(self.spec.layers):
            in_shapes.append(tuple(a.shape[1:]))
            if isinstance(layer, (Conv, Dense)):
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
            if isinstance(layer, (Conv, Dense)) and id(layer) in keep:
                cots[k] = g.view(n, nl, *g.shape[1:])
            if k == 0 or layer.source is None:
                continue
            if not any(isinstance(earlier, (Conv, Dense)) and id(earlier) in keep
                       for earlier in self.spec.layers[:k]):
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
            cw, cb = layer_coefficients(layer)
            if isinstance(layer, Dense):
                acts.append(inputs[k])
                dcots.append(cots[k])
                continue
            delta = cots[k].flatten(3)  # [N, n_L, C_out, P]
            if order == "gradients":
                # √c_w Σ_p δ_p ⊗ π_p by one bmm (the scale on δ, the smaller factor) and
                # √c_b Σ_p δ_p; their Grams add.
                parts = []
                if cw:
                    d = delta.reshape(n, nl * delta.shape[2], -1).mul(cw ** 0.5)
                    parts.append(torch.bmm(d, _patches(layer, inputs[k])).view(n, nl, -1))
                if cb:
                    parts.append(delta.sum(-1).mul_(cb ** 0.5).view(n, nl, -1))
                convs.append(ConvFactors(order, cw, cb, jac=parts))
            else:
                bias = delta.sum(-1)
                pat = _patches(layer, inputs[k]) if cw else None  # [N, P, C_in|Q|]
                convs.append(ConvFactors(order, cw, cb, patches=pat, cot=delta, bias=bias))
        return acts, dcots, convs

    def layer_names(self) -> list[str]:
        """Per Conv layer with a nonzero coefficient, "position: order" (for NTKInfo)."""
        names = []
        for k, layer in enumerate(self.convs):
            if any(self.conv_coefs[k]):
                names.append(f"{layer.position}: {self.orders[k]}")
        return names
