"""The `bench graph` suite in its quick mode (a smoke run: no timing is asserted)."""

import json

import torch

from torch_ntk.analytic.cnn import cnn_kernels as walker
from torch_ntk.bench import graph
from torch_ntk.cli.main import main


def test_bench_graph_quick(tmp_path, capsys):
    assert main(["bench", "graph", "--quick", "--device", "cpu", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "graph_cpu.json").read_text())
    assert payload["benchmark"] == "graph" and payload["quick"]
    assert payload["machine"]["device"] == "cpu" and "load_before" in payload
    kinds = {r["case"].split(" ")[1] for r in payload["rows"]}
    assert kinds == {"CNN", "MLP"}
    for row in payload["rows"]:
        assert row["fused_s"] > 0 and row["baseline_s"] > 0 and row["ratio"] > 0
        assert row["max_rel_diff"] <= 1e-4  # float32 fused against the float64/float32 walker
    text = capsys.readouterr().out
    assert "| case |" in text and "graph_cpu.json" in text and "smoke run" in text


def test_bench_networks_are_what_they_say():
    """The residual MLP and the chain it is timed against both have 10 dense layers, and
    different kernels (the residual spec is not silently a chain)."""
    from torch_ntk.layers import Dense
    spec, chain = graph.residual_mlp(), graph.chain_mlp()
    assert sum(isinstance(l, Dense) for l in spec.layers) == graph.MLP_DEPTH
    assert sum(isinstance(l, Dense) for l in chain.layers) == graph.MLP_DEPTH
    x = torch.randn(5, graph.MLP_FEATURES, dtype=torch.float64)
    assert not torch.allclose(walker(spec, x).ntk, walker(chain, x).ntk)
