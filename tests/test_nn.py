"""NTKLinear and ntk_mlp: initialization laws, forward formulas, argument errors."""

import math

import pytest
import torch
from torch import nn

import torch_ntk as tn


def test_ntk_parametrization_forward_and_init():
    layer = tn.NTKLinear(400, 300, weight_std=1.5, bias_std=0.2).double()
    w, b = layer.weight.detach(), layer.bias.detach()
    assert abs(float(w.mean())) < 0.01 and abs(float(w.var()) - 1.0) < 0.02
    assert abs(float(b.var()) - 1.0) < 0.2
    x = torch.randn(5, 400, dtype=torch.float64)
    expected = 1.5 / math.sqrt(400) * x @ w.T + 0.2 * b
    assert torch.allclose(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_standard_parametrization_forward_and_init():
    layer = tn.NTKLinear(400, 300, weight_std=1.5, bias_std=0.2, parametrization="standard")
    assert abs(float(layer.weight.var()) - 1.5**2 / 400) < 0.02 * 1.5**2 / 400
    assert abs(float(layer.bias.std()) - 0.2) < 0.03
    x = torch.randn(5, 400)
    assert torch.allclose(layer(x), x @ layer.weight.T + layer.bias, atol=1e-5)


def test_both_parametrizations_have_the_same_output_law():
    x = torch.randn(2, 50)
    outs = {}
    for p in ("ntk", "standard"):
        torch.manual_seed(1)
        outs[p] = torch.cat([tn.NTKLinear(50, 2000, weight_std=1.3, bias_std=0.4,
                                          parametrization=p)(x) for _ in range(5)], 1)
    cov_ntk = outs["ntk"] @ outs["ntk"].T / outs["ntk"].shape[1]
    cov_std = outs["standard"] @ outs["standard"].T / outs["standard"].shape[1]
    expected = 1.3**2 * x @ x.T / 50 + 0.4**2
    assert torch.allclose(cov_ntk, expected, rtol=0.05, atol=0.03)
    assert torch.allclose(cov_std, expected, rtol=0.05, atol=0.03)


def test_no_bias_and_errors():
    layer = tn.NTKLinear(3, 4, bias=False)
    assert layer.bias is None and len(list(layer.parameters())) == 1
    with pytest.raises(ValueError, match="parametrization must be one of"):
        tn.NTKLinear(3, 4, parametrization="mup")
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        tn.NTKLinear(0, 4)
    with pytest.raises(ValueError, match="non-negative"):
        tn.NTKLinear(3, 4, weight_std=-1)


def test_ntk_mlp_structure():
    model = tn.ntk_mlp([3, 16, 8, 2], "tanh", weight_std=1.2, bias_std=0.0)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["NTKLinear", "Tanh", "NTKLinear", "Tanh", "NTKLinear"]
    assert model(torch.randn(4, 3)).shape == (4, 2)
    assert all(m.weight_std == 1.2 for m in model if isinstance(m, tn.NTKLinear))
    erf = tn.ntk_mlp([3, 4, 1], "erf")
    assert isinstance(erf[1], tn.nn.Erf)
    leaky = tn.ntk_mlp([3, 4, 4, 1], nn.LeakyReLU(0.3))
    assert leaky[1] is not leaky[3] and leaky[1].negative_slope == 0.3
    with pytest.raises(ValueError, match="widths must list at least two"):
        tn.ntk_mlp([3])
    with pytest.raises(ValueError, match="not a registered activation"):
        tn.ntk_mlp([3, 4, 1], nn.LayerNorm(4))
    with pytest.raises(ValueError, match="unknown activation"):
        tn.ntk_mlp([3, 4, 1], "swish")


def test_erf_and_abs_modules():
    x = torch.randn(10)
    assert torch.equal(tn.nn.Erf()(x), torch.erf(x))
    assert torch.equal(tn.nn.Abs()(x), x.abs())
