"""Lifting nn.Sequential models into layer specs."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torch_ntk as tn
from torch_ntk.activations import Activation
from torch_ntk.analytic import compiled_op_args
from torch_ntk.layers import AvgPool, Conv, Dense, Flatten
from torch_ntk.lifting import LayerSpec, lift


def test_lift_ntk_mlp_matches_mlp_spec():
    for p in ("ntk", "standard"):
        model = tn.ntk_mlp([3, 16, 8, 2], "gelu", weight_std=1.3, bias_std=0.2, parametrization=p)
        assert lift(model) == tn.mlp_spec([3, 16, 8, 2], "gelu", 1.3, 0.2, p)


def test_lift_torch_linear_uses_default_init_variances():
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 1, bias=False))
    d0, d1 = lift(model).dense_layers
    assert (d0.weight_var, d0.bias_var, d0.parametrization) == (1 / 3, 1 / 15, "standard")
    assert (d1.bias_var, d1.has_bias, d1.ntk_bias_coef) == (0.0, False, 0.0)
    over = lift(model, linear_weight_var=2.0, linear_bias_var=0.5).dense_layers[0]
    assert (over.weight_var, over.bias_var) == (2.0, 0.5)


def test_lift_skips_identity_dropout_flatten_and_joins_dense_layers():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Identity(), nn.Dropout(0.2),
                          nn.Sequential(nn.Linear(4, 4), nn.Tanh()), tn.NTKLinear(4, 1))
    spec = lift(model)
    assert spec.flatten_input
    assert [type(l).__name__ for l in spec.layers] == ["Dense", "Activation", "Dense",
                                                        "Activation", "Dense"]
    assert spec.activations == (Activation("identity"), Activation("tanh"))
    assert spec.depth == 3 and spec.input_features == 6 and spec.output_features == 1


def test_op_args_coefficients():
    spec = tn.mlp_spec([4, 10, 1], "relu", weight_std=2.0, bias_std=0.5, parametrization="ntk")
    a = compiled_op_args(spec)
    assert (a["input_weight_var"], a["input_bias_var"], a["input_ntk_weight"],
            a["input_ntk_bias"]) == (1.0, 0.25, 1.0, 0.25)
    assert (a["weight_var"], a["ntk_weight"], a["ntk_bias"]) == ([4.0], [4.0], [0.25])
    std = tn.mlp_spec([4, 10, 1], "relu", weight_std=2.0, bias_std=0.5, parametrization="standard")
    a = compiled_op_args(std)
    assert (a["input_ntk_weight"], a["input_ntk_bias"], a["ntk_weight"], a["ntk_bias"]) == (
        1.0, 1.0, [10.0], [1.0])


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),
         r"module 1 \(BatchNorm1d\) does not lift"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 1)),
         r"node 2 \(LayerNorm at 2\) normalizes node 1 \(Activation\), which is not a "
         "zero-mean Gaussian"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 1)), r"module 0 \(ReLU\) comes before the first dense"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 1)),
         r"module 2 \(Tanh\) follows another activation"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU()), "ends with an activation"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(),
                       nn.Linear(2, 1)),
         r"module 3 \(ReLU\) does not lift: an activation of a pooled activation's output"),
        (nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 1))),
         r"module 1.1 \(Conv1d\) does not lift"),
        (nn.Sequential(), "has no dense layer"),
        (nn.BatchNorm1d(3), "must be an nn.Sequential or a module whose forward"),
    ],
)
def test_lift_errors_name_the_module(model, match):
    with pytest.raises(ValueError, match=match):
        lift(model)


def test_layer_spec_validation():
    with pytest.raises(ValueError, match="must be a Dense"):
        LayerSpec((Activation("relu"),))
    with pytest.raises(ValueError, match="out_features=4 is followed by one with in_features=5"):
        LayerSpec((Dense(3, 4), Activation("relu"), Dense(5, 1)))
    with pytest.raises(ValueError, match="parametrization must be one of"):
        Dense(3, 4, parametrization="other")


def test_an_activation_of_pooled_activations_is_refused_and_pooled_convolutions_lift():
    """A pool of ReLU outputs is not Gaussian, so a second activation on it has no dual-map
    limit; a pool of a convolution's output is, and a convolution in between restores it."""
    conv, relu = Conv(1, 2, kernel_size=(3, 3)), Activation("relu")
    pool, tail = AvgPool((2, 2), (2, 2)), (Flatten(), Dense(2, 1))
    with pytest.raises(ValueError, match=r"layer 3 \(an Activation\) follows a pooling of an "
                       "activation's output"):
        LayerSpec((conv, relu, pool, relu) + tail)
    LayerSpec((conv, pool, relu) + tail)  # pool of a Gaussian: lifts
    LayerSpec((conv, relu, pool, Conv(2, 2, kernel_size=(1, 1)), relu) + tail)
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(1, 2, 3), nn.Linear(2, 1)

        def forward(self, x):
            return self.out(F.avg_pool2d(self.conv(x).relu(), 2).relu().flatten(1))

    with pytest.raises(ValueError, match=r"an activation of a pooled activation's output.*"
                       r"relu"):
        lift(Chain())


def test_subclass_that_overrides_forward_does_not_lift():
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    class Kept(nn.Linear):  # keeps nn.Linear's forward: lifts like it
        pass

    model = nn.Sequential(Doubled(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"module 0 \(Doubled\) overrides forward"):
        lift(model)
    with pytest.raises(ValueError, match="overrides forward"):
        tn.analytic_kernels(model, torch.randn(2, 3))
    assert lift(nn.Sequential(Kept(3, 1))).dense_layers[0].in_features == 3


def test_lifted_layers_are_bound_to_their_modules():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 1))
    spec = lift(model)
    assert [layer.source for layer in spec.layers] == [model[0], model[1], model[2], None,
                                                       model[3]]
    assert tn.mlp_spec([3, 4, 1]).layers[0].source is None
