"""The networks of ``torch-ntk kernel``: the model its flags describe (``--widths``,
``--activation``, ``--parametrization``, ``--conv``/``--readout``), a model file
(``--model``) or a state_dict (``--state-dict``), and the lifted spec of the limit kinds."""

from __future__ import annotations

import copy
import os

def dense_layers(args, widths, activation, device, dtype):
    from torch import nn

    from ..nn import NTKLinear

    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if args.parametrization == "torch":
            layers.append(nn.Linear(a, b, bias=args.bias, device=device, dtype=dtype))
        else:
            layers.append(NTKLinear(a, b, bias=args.bias, weight_std=args.weight_std,
                                    bias_std=args.bias_std, parametrization=args.parametrization,
                                    device=device, dtype=dtype))
        if k < len(widths) - 2:
            layers.append(activation.module())
    return layers


def build_network(args, activation, x1, device, dtype):
    """The nn.Sequential the flags describe (an MLP, or a CNN for the images x1)."""
    import torch
    from torch import nn

    from ..nn import NTKConv1d, NTKConv2d

    if args.conv is None:
        return nn.Sequential(*dense_layers(args, args.widths, activation, device, dtype))
    dims = x1.dim() - 2
    channels = [x1.shape[1], *args.conv]
    conv = {(1, False): NTKConv1d, (2, False): NTKConv2d, (1, True): nn.Conv1d,
            (2, True): nn.Conv2d}[dims, args.parametrization == "torch"]
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        extra = {} if args.parametrization == "torch" else dict(
            weight_std=args.weight_std, bias_std=args.bias_std,
            parametrization=args.parametrization)
        layers += [conv(c_in, c_out, args.kernel_size, stride=args.stride, padding=args.padding,
                        bias=args.bias, device=device, dtype=dtype, **extra),
                   activation.module()]
    if args.readout == "gap":
        layers += [(nn.AdaptiveAvgPool1d if dims == 1 else nn.AdaptiveAvgPool2d)(1), nn.Flatten()]
        features = channels[-1]
    else:
        layers.append(nn.Flatten())
        try:
            with torch.no_grad():  # the flattened size for these images
                probe = torch.zeros(1, *x1.shape[1:], dtype=dtype, device="meta")
                features = copy.deepcopy(nn.Sequential(*layers)).to("meta")(probe).shape[1]
        except RuntimeError as error:
            raise ValueError(f"argument input: images of shape {list(x1.shape[1:])} are too "
                             f"small for {len(args.conv)} conv layer(s) of --kernel-size "
                             f"{args.kernel_size} (--padding {args.padding}): {error}") from None
    return nn.Sequential(*layers, *dense_layers(args, [features, *args.widths], activation,
                                                 device, dtype))


def load_model(parser, args, device, dtype):
    import torch

    try:  # the user vouched for this file (see --model's help): it is unpickled
        model = torch.load(args.model, map_location=device, weights_only=False)
    except Exception as error:
        parser.error(f"argument --model: cannot load {args.model!r}: {error}")
    if not isinstance(model, torch.nn.Module):
        parser.error(f"argument --model: {args.model!r} holds a {type(model).__name__}, not an "
                     "nn.Module (for a state_dict use the architecture flags and --state-dict)")
    return model.to(dtype=dtype)


def empirical_model(parser, args, activation, x1, device, dtype):
    import torch

    from ..nn import weight_scale_ratio

    if args.model is not None:
        return load_model(parser, args, device, dtype)
    torch.manual_seed(args.seed)
    try:
        model = build_network(args, activation, x1, device, dtype)
    except ValueError as error:
        parser.error(str(error))
    if args.state_dict is None:
        return model
    if not os.path.isfile(args.state_dict):
        parser.error(f"argument --state-dict: {args.state_dict!r} is a folder; expected a file "
                     "saved by torch.save(model.state_dict(), path)"
                     if os.path.isdir(args.state_dict) else
                     f"argument --state-dict: no such file: {args.state_dict!r}")
    try:
        state = torch.load(args.state_dict, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # a wrong file or architecture
        parser.error(f"argument --state-dict: cannot load {args.state_dict!r} into the "
                     f"{args.parametrization} network {describe_network(args)} ({activation.name}): "
                     f"{error}")
    model.to(dtype)
    ratio = weight_scale_ratio(model)
    if not 1 / 3 <= ratio <= 3:
        parser.error(
            f"argument --state-dict: its weights have {ratio:.2g}× the initial scale of "
            f"--parametrization {args.parametrization} layers, so they belong to another "
            "parametrization: use --parametrization torch for nn.Sequential(nn.Linear, "
            "...) or standard for NTKLinear(parametrization='standard')")
    return model


def describe_network(args) -> str:
    return (f"MLP {args.widths}" if args.conv is None else
            f"CNN conv {args.conv}, {args.readout}, dense {args.widths}")


def lifted_spec(parser, args, activation, x1, dtype):
    from ..lifting.lift import lift, mlp_spec

    if args.model is not None:
        try:
            return lift(load_model(parser, args, "cpu", dtype))
        except ValueError as error:
            parser.error(f"argument --model: {error}")
    if args.conv is None and args.parametrization != "torch":
        return mlp_spec(args.widths, activation, weight_std=args.weight_std,
                        bias_std=args.bias_std, parametrization=args.parametrization,
                        bias=args.bias)
    try:
        return lift(build_network(args, activation, x1, "meta", dtype))
    except ValueError as error:
        parser.error(str(error))
