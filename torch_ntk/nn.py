"""NTK-parametrized layers and MLP builders (NTK_MATH.md §1).

NTK parametrization (Jacot et al. 2018): parameters are i.i.d. N(0, 1) and the
layer computes

    α̃ = (σ_w / √n_in) · W α + σ_b · b,

so the kernel has a finite limit as widths grow. "standard" parametrization puts
the scale into the initialization instead (W ~ N(0, σ_w²/n_in), b ~ N(0, σ_b²),
α̃ = W α + b): the same law of the function at initialization, a different NTK.

Example::

    >>> model = ntk_mlp([3, 512, 512, 1], activation="relu")
    >>> model(torch.randn(8, 3)).shape
    torch.Size([8, 1])
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

from .activations import Abs, Activation, Erf, from_module, from_name

__all__ = ["NTKLinear", "ntk_mlp", "Erf", "Abs", "PARAMETRIZATIONS"]

PARAMETRIZATIONS = ("ntk", "standard")


class NTKLinear(nn.Module):
    """A dense layer in NTK (default) or standard parametrization.

    Args:
        in_features: n_in, the width of the input α.
        out_features: n_out.
        bias: whether the layer has a bias b.
        weight_std: σ_w.
        bias_std: σ_b.
        parametrization: "ntk" — W, b ~ N(0, 1), forward (σ_w/√n_in)·W α + σ_b·b;
            "standard" — W ~ N(0, σ_w²/n_in), b ~ N(0, σ_b²), forward W α + b.

    Shapes: input [..., in_features] → output [..., out_features]. ``weight`` is
    [out_features, in_features] as in ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_std: float = 1.0,
        bias_std: float = 0.1,
        parametrization: str = "ntk",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NTKLinear: {name} must be a positive integer; got {value!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"NTKLinear: parametrization must be one of {PARAMETRIZATIONS}; "
                f"got {parametrization!r}"
            )
        if not weight_std >= 0 or not bias_std >= 0:
            raise ValueError(
                f"NTKLinear: weight_std and bias_std must be non-negative; got {weight_std}, "
                f"{bias_std}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.weight_std = float(weight_std)
        self.bias_std = float(bias_std)
        self.parametrization = parametrization
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    @property
    def weight_scale(self) -> float:
        """The factor applied to W in forward: σ_w/√n_in (ntk) or 1 (standard)."""
        if self.parametrization == "ntk":
            return self.weight_std / math.sqrt(self.in_features)
        return 1.0

    @property
    def bias_scale(self) -> float:
        """The factor applied to b in forward: σ_b (ntk) or 1 (standard)."""
        return self.bias_std if self.parametrization == "ntk" else 1.0

    def reset_parameters(self) -> None:
        """Draw W and b from the parametrization's initialization (uses torch's RNG)."""
        with torch.no_grad():
            if self.parametrization == "ntk":
                self.weight.normal_(0.0, 1.0)
                if self.bias is not None:
                    self.bias.normal_(0.0, 1.0)
            else:
                self.weight.normal_(0.0, self.weight_std / math.sqrt(self.in_features))
                if self.bias is not None:
                    self.bias.normal_(0.0, self.bias_std)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.nn.functional.linear(x, self.weight)
        if self.parametrization == "ntk":
            out = out * self.weight_scale
        if self.bias is not None:
            out = out + self.bias_scale * self.bias
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight_std={self.weight_std}, "
            f"bias_std={self.bias_std}, parametrization={self.parametrization!r}"
        )


ActivationLike = Union[str, Activation, nn.Module, Callable[[], nn.Module]]


def _activation_factory(activation: ActivationLike) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        act = from_name(activation)
        return act.module
    if isinstance(activation, Activation):
        return activation.module
    if isinstance(activation, nn.Module):
        if from_module(activation) is None:
            raise ValueError(
                f"ntk_mlp: activation {type(activation).__name__} is not a registered "
                "activation; see torch_ntk.activations.REGISTRY"
            )
        return lambda: copy.deepcopy(activation)
    if callable(activation):
        return activation
    raise TypeError(
        "ntk_mlp: activation must be a registered name, an Activation, an nn.Module or a "
        f"factory returning one; got {type(activation).__name__}"
    )


def ntk_mlp(
    widths: Sequence[int],
    activation: ActivationLike = "relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
    bias: bool = True,
    device=None,
    dtype=None,
) -> nn.Sequential:
    """An MLP ``NTKLinear → φ → … → NTKLinear`` with widths n_0 … n_L.

    Args:
        widths: [n_0, n_1, …, n_L], at least two entries (L ≥ 1 dense layers).
        activation: a registered name ("relu", "erf", "tanh", …), an Activation, an
            activation module (copied per layer) or a factory of modules.
        weight_std, bias_std, parametrization, bias: passed to every NTKLinear.

    Returns:
        ``nn.Sequential`` mapping [N, n_0] to [N, n_L]; its parameters use torch's RNG.
    """
    widths = list(widths)
    if len(widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(
            f"ntk_mlp: widths must list at least two positive integers [n_0, ..., n_L]; "
            f"got {widths!r}"
        )
    make_activation = _activation_factory(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(make_activation())
        layers.append(
            NTKLinear(
                n_in, n_out, bias=bias, weight_std=weight_std, bias_std=bias_std,
                parametrization=parametrization, device=device, dtype=dtype,
            )
        )
    return nn.Sequential(*layers)
