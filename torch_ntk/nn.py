"""NTK-parametrized layers (dense and convolutional) and MLP builders (Jacot et al. §2).

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

__all__ = ["NTKLinear", "NTKConv1d", "NTKConv2d", "ntk_mlp", "linear_mlp", "weight_scale_ratio",
           "Erf", "Abs", "PARAMETRIZATIONS", "conv_padding"]

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


def conv_padding(function: str, padding, kernel_size: tuple, stride: tuple,
                 dilation: tuple) -> tuple:
    """nn.Conv's ``padding`` ("same", "valid", int or tuple) as (before, after) per spatial dim.

    "same" pads d·(k−1) in total, the smaller half before (as torch does; stride 1 only).
    """
    dims = len(kernel_size)
    if padding == "valid":
        return ((0, 0),) * dims
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"{function}: padding='same' needs stride 1; got stride={stride}")
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    pads = _tuple_of(function, "padding", padding, dims, minimum=0)
    return tuple((p, p) for p in pads)


def _tuple_of(function: str, name: str, value, dims: int, minimum: int) -> tuple:
    values = (value,) * dims if isinstance(value, int) else tuple(value) if isinstance(
        value, (tuple, list)) else None
    if values is None or len(values) != dims or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(f"{function}: {name} must be an integer >= {minimum} or a tuple of "
                         f"{dims}; got {value!r}")
    return values


class _NTKConv(nn.Module):
    """The convolution of :class:`NTKConv1d`/:class:`NTKConv2d` (``dims`` spatial dims)."""

    dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, padding_mode: str = "zeros", bias: bool = True,
                 weight_std: float = 1.0, bias_std: float = 0.1, parametrization: str = "ntk",
                 device=None, dtype=None) -> None:
        super().__init__()
        name = type(self).__name__
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {label} must be a positive integer; got {value!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"{name}: parametrization must be one of {PARAMETRIZATIONS}; "
                             f"got {parametrization!r}")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"{name}: padding_mode must be 'zeros' or 'circular'; "
                             f"got {padding_mode!r}")
        if not weight_std >= 0 or not bias_std >= 0:
            raise ValueError(f"{name}: weight_std and bias_std must be non-negative; got "
                             f"{weight_std}, {bias_std}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _tuple_of(name, "kernel_size", kernel_size, self.dims, minimum=1)
        self.stride = _tuple_of(name, "stride", stride, self.dims, minimum=1)
        self.dilation = _tuple_of(name, "dilation", dilation, self.dims, minimum=1)
        self.padding = padding
        self.padding_pairs = conv_padding(name, padding, self.kernel_size, self.stride,
                                          self.dilation)
        self.padding_mode = padding_mode
        self.weight_std, self.bias_std = float(weight_std), float(bias_std)
        self.parametrization = parametrization
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def fan_in(self) -> int:
        """C_in·prod(kernel_size)."""
        return self.in_channels * math.prod(self.kernel_size)

    @property
    def weight_scale(self) -> float:
        """The factor applied to W in forward: σ_w/√fan_in (ntk) or 1 (standard)."""
        return self.weight_std / math.sqrt(self.fan_in) if self.parametrization == "ntk" else 1.0

    @property
    def bias_scale(self) -> float:
        """The factor applied to b in forward: σ_b (ntk) or 1 (standard)."""
        return self.bias_std if self.parametrization == "ntk" else 1.0

    def reset_parameters(self) -> None:
        """W, b ~ N(0, 1) (ntk) or N(0, σ_w²/fan_in), N(0, σ_b²) (standard); torch's RNG."""
        with torch.no_grad():
            ntk = self.parametrization == "ntk"
            self.weight.normal_(0.0, 1.0 if ntk else self.weight_std / math.sqrt(self.fan_in))
            if self.bias is not None:
                self.bias.normal_(0.0, 1.0 if ntk else self.bias_std)

    def forward(self, x: Tensor) -> Tensor:
        pad = [p for pair in reversed(self.padding_pairs) for p in pair]  # last dim first
        if any(pad):
            mode = "circular" if self.padding_mode == "circular" else "constant"
            x = torch.nn.functional.pad(x, pad, mode=mode)
        conv = torch.nn.functional.conv1d if self.dims == 1 else torch.nn.functional.conv2d
        out = conv(x, self.weight, None, self.stride, 0, self.dilation)
        if self.parametrization == "ntk":
            out = out * self.weight_scale
        if self.bias is not None:
            out = out + (self.bias_scale * self.bias).reshape(-1, *([1] * self.dims))
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
            f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}, "
            f"weight_std={self.weight_std}, bias_std={self.bias_std}, "
            f"parametrization={self.parametrization!r}"
        )


class NTKConv1d(_NTKConv):
    """A 1-D convolution in NTK (default) or standard parametrization.

    nn.Conv1d's arguments (``groups`` not offered; ``padding`` "same", "valid", an int or a
    1-tuple; ``padding_mode`` "zeros" or "circular") with :class:`NTKLinear`'s law on
    fan_in = C_in·k: "ntk" — W, b ~ N(0, 1), forward (σ_w/√fan_in)·(W ⋆ x) + σ_b·b;
    "standard" — W ~ N(0, σ_w²/fan_in), b ~ N(0, σ_b²), forward W ⋆ x + b.

    Shapes: [N, C_in, L] → [N, C_out, L_out]; ``weight`` [C_out, C_in, k] as in nn.Conv1d.
    """

    dims = 1


class NTKConv2d(_NTKConv):
    """A 2-D convolution in NTK (default) or standard parametrization.

    As :class:`NTKConv1d` with fan_in = C_in·k_h·k_w; [N, C_in, H, W] → [N, C_out, H', W'];
    ``weight`` [C_out, C_in, k_h, k_w] as in nn.Conv2d.
    """

    dims = 2


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
    return _mlp("ntk_mlp", widths, activation, lambda n_in, n_out: NTKLinear(
        n_in, n_out, bias=bias, weight_std=weight_std, bias_std=bias_std,
        parametrization=parametrization, device=device, dtype=dtype))


def linear_mlp(
    widths: Sequence[int],
    activation: ActivationLike = "relu",
    bias: bool = True,
    device=None,
    dtype=None,
) -> nn.Sequential:
    """The same MLP made of plain ``nn.Linear`` layers (PyTorch's initialization).

    Standard parametrization; :func:`torch_ntk.lift` reads each layer with PyTorch's
    default-initialization variances σ_w² = 1/3, σ_b² = 1/(3·fan_in). This is the model
    of ``torch-ntk kernel --parametrization torch``.
    """
    return _mlp("linear_mlp", widths, activation, lambda n_in, n_out: nn.Linear(
        n_in, n_out, bias=bias, device=device, dtype=dtype))


def _mlp(function: str, widths: Sequence[int], activation: ActivationLike,
         make_dense: Callable[[int, int], nn.Module]) -> nn.Sequential:
    widths = list(widths)
    if len(widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(
            f"{function}: widths must list at least two positive integers [n_0, ..., n_L]; "
            f"got {widths!r}"
        )
    make_activation = _activation_factory(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(make_activation())
        layers.append(make_dense(n_in, n_out))
    return nn.Sequential(*layers)


def weight_scale_ratio(model: nn.Module) -> float:
    """How the dense weights compare with their scale at initialization: the geometric
    mean over NTKLinear/nn.Linear layers of RMS(W) / RMS of W at initialization.

    Initialization RMS: 1 for NTK-parametrized NTKLinear (W ~ N(0, 1)); weight_std/√n_in
    for standard NTKLinear; 1/√(3·n_in) for nn.Linear (uniform on ±1/√n_in). The
    parametrizations differ by a factor of about √n_in, so a ratio far from 1 means the
    weights belong to another parametrization (the CLI refuses outside [1/3, 3]).
    """
    logs = []
    for module in model.modules():
        if isinstance(module, NTKLinear):
            n_in = module.in_features
            init = 1.0 if module.parametrization == "ntk" else module.weight_std / math.sqrt(n_in)
        elif isinstance(module, nn.Linear):
            init = 1 / math.sqrt(3 * module.in_features)
        else:
            continue
        rms = float(module.weight.detach().double().square().mean().sqrt())
        if init > 0 and rms > 0:
            logs.append(math.log(rms / init))
    return math.exp(sum(logs) / len(logs)) if logs else 1.0
