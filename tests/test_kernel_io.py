"""save_kernels / load_kernels from the user's side: round trips, weights_only, refusals."""

import math

import pytest
import torch

import torch_ntk


def test_kernels_round_trip_and_weights_only(tmp_path):
    model = torch_ntk.ntk_mlp([3, 16, 1], "relu")
    k = torch_ntk.analytic_kernels(model, torch.randn(5, 3, dtype=torch.float64))
    path = tmp_path / "k.pt"
    torch_ntk.save_kernels(path, k)
    back = torch_ntk.load_kernels(path)
    assert type(back) is torch_ntk.Kernels
    assert torch.equal(back.ntk, k.ntk) and torch.equal(back.nngp, k.nngp)
    assert back.ntk.dtype == torch.float64
    raw = torch.load(path, weights_only=True)  # plain data: the safe loader accepts it
    assert raw["format"] == "torch_ntk.kernels" and raw["type"] == "Kernels"


def test_a_missing_field_stays_none(tmp_path):
    k = torch_ntk.Kernels(nngp=None, ntk=torch.eye(3))
    torch_ntk.save_kernels(tmp_path / "k.pt", k)
    back = torch_ntk.load_kernels(tmp_path / "k.pt")
    assert back.nngp is None and torch.equal(back.ntk, torch.eye(3))


def test_monte_carlo_kernels_and_dicts_round_trip(tmp_path):
    mc = torch_ntk.MonteCarloKernels(torch.ones(2, 2), None, torch.zeros(2, 2), None, 4, None)
    torch_ntk.save_kernels(tmp_path / "mc.pt", mc)
    back = torch_ntk.load_kernels(tmp_path / "mc.pt")
    assert type(back) is torch_ntk.MonteCarloKernels and back.n_samples == 4
    assert torch.equal(back.nngp, mc.nngp) and back.ntk is None
    torch_ntk.save_kernels(tmp_path / "d.pt", {"ntk": torch.arange(4.0), "scale": math.pi})
    d = torch_ntk.load_kernels(tmp_path / "d.pt")
    assert isinstance(d, dict) and d["scale"] == math.pi and torch.equal(d["ntk"], torch.arange(4.0))


def test_a_non_kernel_file_is_refused_with_the_reason(tmp_path):
    torch.save({"weight": torch.ones(2)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match=r"state\.pt holds a dict with keys \['weight'\], not a "
                                         r"kernel file written by torch_ntk\.save_kernels"):
        torch_ntk.load_kernels(tmp_path / "state.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt is not a kernel file"):
        torch_ntk.load_kernels(tmp_path / "notes.pt")
    torch.save(torch.ones(3), tmp_path / "t.pt")
    with pytest.raises(ValueError, match=r"holds a Tensor"):
        torch_ntk.load_kernels(tmp_path / "t.pt")


def test_objects_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="field 'model' is a Linear"):
        torch_ntk.save_kernels(tmp_path / "x.pt", {"model": torch.nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="got list"):
        torch_ntk.save_kernels(tmp_path / "x.pt", [torch.ones(1)])
    assert not list(tmp_path.iterdir())  # nothing written
