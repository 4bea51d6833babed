"""Benchmark: the empirical NTK of models people study (ResNet-18, a transformer encoder, a
token language model) by the hook engine against the PyTorch tutorial's Jacobian contraction.

    torch-ntk bench models [--quick] [--out DIR]
    python -m torch_ntk.bench.models [--quick] [--repeats R] [--out PATH]

The models are written here (torchvision's wheels do not always match the installed torch):

- ``resnet18``: torchvision's architecture — BasicBlocks [2, 2, 2, 2] of 64…512 channels,
  BatchNorm (eval mode), 1×1 downsample convolutions — with a 3×3 stem and no max-pool
  for 3×32×32 inputs, random init, 10 outputs;
- ``encoder``: a 2-layer ``nn.TransformerEncoder`` (d = 128, 4 heads, feed-forward 512),
  16 tokens of 32 features through a Linear embedding, mean-pooled, 10 outputs;
- ``token_lm``: ``nn.Embedding`` (1000 tokens) plus learned positions, the same encoder and
  a vocabulary head; the last position's 1000 logits.

Each case (float32, x2 = None, in one process, interleaved rounds after a warm-up) times
``empirical_ntk(model, x, mode, method="hooks")`` and the tutorial's ``vmap(jacrev)``
contraction (:func:`torch_func_ntk`; skipped where its Jacobian would not fit; the hook
engine then runs within a stated ``memory_budget``), reports
their ratio, the relative difference of the kernels, the hook engine's per-module
orders, each method's contraction FLOPs by its model (:func:`torch_func_flops`,
:func:`hooks_flops`: how far from the GEMM floor each runs), and each method's peak
memory beyond its inputs in a fresh child process (``common.peak_memory``: the peak
resident set, VmHWM). Full mode is for a quiet machine; ``--quick`` runs the same three
architectures at tiny sizes (seconds).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import torch_ntk as tn

from .common import (
    interleaved, keep_runs, load_average, machine_info, machine_line, markdown_table,
    parse_suite_args, peak_memory, results_dir, runs_line, summary, write_json,
)

__all__ = ["BasicBlock", "Encoder", "ResNet", "TokenLM", "hooks_flops", "main", "make_case",
           "resnet18", "torch_func_flops", "torch_func_ntk"]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3×3–BN–ReLU–conv3×3–BN, plus the input (through a 1×1
    conv and BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """3×3 stem (no max-pool), four stages of BasicBlocks, global average pool, Linear."""

    def __init__(self, width: int = 64, blocks=(2, 2, 2, 2), n_out: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, c = [], width
        for i, count in enumerate(blocks):
            c_out = width * 2 ** i
            stage = [BasicBlock(c, c_out, 1 if i == 0 else 2)]
            stage += [BasicBlock(c_out, c_out, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            c = c_out
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))


def resnet18(width: int = 64, n_out: int = 10) -> ResNet:
    """ResNet-18 (BasicBlocks [2, 2, 2, 2]) for 3×32×32 inputs."""
    return ResNet(width, (2, 2, 2, 2), n_out)


class Encoder(nn.Module):
    """Linear embedding of the tokens' features, ``nn.TransformerEncoder``, mean over
    tokens, Linear readout."""

    def __init__(self, features: int = 32, d: int = 128, heads: int = 4, ff: int = 512,
                 layers: int = 2, n_out: int = 10, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(features, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.encoder(h)
        return self.head(h.mean(1 if self.batch_first else 0))


class TokenLM(nn.Module):
    """Token ids [N, T] → the last position's logits [N, vocab]: token and position
    embeddings, ``nn.TransformerEncoder``, a vocabulary head."""

    def __init__(self, vocab: int = 1000, tokens: int = 16, d: int = 128, heads: int = 4,
                 ff: int = 512, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Embedding(tokens, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        h = self.encoder(self.embed(ids) + self.position(positions))
        return self.head(h[:, -1])


def torch_func_flops(n: int, n_out: int, params: int, mode: str) -> float:
    """The contraction FLOPs of :func:`torch_func_ntk` (x2 = x): its einsum computes every
    pair, 2·(N·n_L)²·P in "full", 2·N²·n_L·P in "trace" (forming the Jacobians, N·n_L
    backward passes, not counted)."""
    return 2.0 * n * n * (n_out * n_out if mode == "full" else n_out) * params


def hooks_flops(model: nn.Module, x: torch.Tensor, mode: str, budget=None) -> float:
    """The contraction FLOPs of the hook engine on (model, x), x2 = None, by its FLOP model
    in the orders it chooses (``HookBlocks.contraction_flops``: the triangle of sample
    pairs; the forward and batched backward not counted)."""
    from torch_ntk._utils.runtime import default_memory_budget
    from torch_ntk.empirical.hooks import HookBlocks

    trainable = {k: v for k, v in model.named_parameters() if v.requires_grad}
    with torch.no_grad():
        n_out = model(x[:1]).shape[-1]
    engine = HookBlocks(model, trainable, x, None, mode, n_out)
    engine.size_blocks(budget or default_memory_budget(x.device), None, False)
    return engine.contraction_flops(x.shape[0])


def torch_func_ntk(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The PyTorch NTK tutorial's Jacobian contraction (x2 = x): [N, N, n_L, n_L] ("full")
    or the mean over outputs of its diagonal ("trace")."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), (None, 0))(params, x)
    total = None
    for j in jac.values():
        j = j.flatten(2)
        term = (torch.einsum("Naf,Mbf->NMab", j, j) if mode == "full"
                else torch.einsum("Naf,Maf->NM", j, j) / j.shape[1])
        total = term if total is None else total + term
    return total


# (model, N, mode, time the baseline, the hook engine's memory_budget or None): full mode is
# the targets; the language model's is "within 4 GB", so it gets a 3 GiB budget.
CASES = {
    False: [("resnet18", 8, "full", True, None), ("encoder", 64, "full", True, None),
            ("token_lm", 16, "trace", False, 3 << 30)],
    True: [("resnet18", 2, "full", True, None), ("encoder", 4, "full", True, None),
           ("token_lm", 2, "trace", True, 64 << 20)],
}


def make_case(name: str, n: int, quick: bool, device: str = "cpu"):
    """(model in eval mode, inputs) of a case, seeded; quick: the same architecture tiny."""
    torch.manual_seed(0)
    if name == "resnet18":
        model = resnet18(4 if quick else 64)
        x = torch.randn(n, 3, 8 if quick else 32, 8 if quick else 32)
    elif name == "encoder":
        model = Encoder(8, 16, 2, 32) if quick else Encoder()
        x = torch.randn(n, 4 if quick else 16, 8 if quick else 32)
    else:
        model = TokenLM(50, 4, 16, 2, 32) if quick else TokenLM()
        x = torch.randint(0, 50 if quick else 1000, (n, 4 if quick else 16))  # int64 ids
    return model.eval().to(device), x.to(device)


def _call(name: str, n: int, mode: str, quick: bool, method: str, device: str = "cpu",
          budget=None):
    """A picklable setup for ``peak_memory``: builds the case, returns the call."""
    model, x = make_case(name, n, quick, device)
    if method == "hooks":
        return lambda: tn.empirical_ntk(model, x, mode=mode, method="hooks", progress=False,
                                        memory_budget=budget)
    return lambda: torch_func_ntk(model, x, mode)


def run_case(case: tuple, repeats: int, quick: bool, device: str = "cpu") -> dict:
    name, n, mode, with_baseline, budget = case
    model, x = make_case(name, n, quick, device)
    with torch.no_grad():
        n_out = model(x[:1]).shape[-1]
    row = {"model": name, "N": n, "n_L": n_out, "mode": mode, "memory_budget": budget,
           "params": sum(p.numel() for p in model.parameters())}
    results: dict = {}

    def hooks():
        results["hooks"], results["info"] = tn.empirical_ntk(
            model, x, mode=mode, method="hooks", progress=False, memory_budget=budget,
            return_info=True)

    def baseline():
        results["torch_func"] = torch_func_ntk(model, x, mode)

    calls = {"hooks": hooks, "torch_func": baseline}
    if not with_baseline:
        del calls["torch_func"]
    for fn in calls.values():  # warm-up (and the results compared below)
        fn()
    times = interleaved(calls, repeats, device)
    for key in calls:
        row[f"{key}_s"] = float(f"{summary(times[key])['median_s']:.4g}")
        mem = peak_memory(functools.partial(_call, name, n, mode, quick, key, device, budget),
                          device)
        row[f"{key}_peak_mb"] = (round(mem["peak_extra_bytes"] / 2**20, 1)
                                 if "peak_extra_bytes" in mem else mem.get("error"))
    if with_baseline:
        ref = results["torch_func"]
        diff = float((results["hooks"] - ref).abs().max()) / float(ref.abs().max())
        row["hooks_rel_diff"] = float(f"{diff:.2e}")
        row["torch_func_over_hooks"] = round(row["torch_func_s"] / row["hooks_s"], 2)
        if isinstance(row.get("torch_func_peak_mb"), float) and isinstance(
                row.get("hooks_peak_mb"), float):
            row["hooks_over_torch_func_memory"] = round(
                row["hooks_peak_mb"] / max(row["torch_func_peak_mb"], 1e-9), 3)
    # how far from the floor: each method's contraction FLOPs (the model's counts)
    row["torch_func_gflop"] = round(torch_func_flops(n, n_out, row["params"], mode) / 1e9, 3)
    row["hooks_gflop"] = round(hooks_flops(model, x, mode, budget) / 1e9, 3)
    row["contractions"] = list(results["info"].contractions)
    row["load"] = round(load_average(), 1)
    print({k: v for k, v in row.items() if k != "contractions"}, flush=True)
    return row


COLUMNS = [
    ("model", "model"), ("params", "parameters"), ("N", "N"), ("n_L", "n_L"), ("mode", "mode"),
    ("hooks_s", "hooks s"), ("torch_func_s", "vmap(jacrev) s"),
    ("torch_func_over_hooks", "× vmap(jacrev)"), ("hooks_peak_mb", "hooks peak MB"),
    ("torch_func_peak_mb", "vmap(jacrev) peak MB"),
    ("hooks_over_torch_func_memory", "memory ratio"), ("hooks_gflop", "hooks GFLOP"),
    ("torch_func_gflop", "vmap(jacrev) GFLOP"), ("hooks_rel_diff", "rel diff"),
    ("load", "load"),
]


def render_models(payload: dict) -> str:
    """The markdown table of a payload of this benchmark and its machine line
    (docs/benchmarks.md); a quick payload says that it is one."""
    quick = (["Quick mode: the three architectures at tiny sizes (a smoke run of the code, "
              "not the issue's cases; their full run is for a quiet machine).", ""]
             if payload.get("quick") else [])
    return "\n".join(quick + [
        markdown_table(payload["rows"], COLUMNS), "",
        f"{machine_line(payload['machine'])}; medians of {payload.get('repeats', '?')} "
        f"interleaved rounds after a warm-up; peak memory beyond the inputs in a fresh "
        f"process; run {payload['wall_s']:.0f} s. {runs_line(payload)}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/models_cpu.json)")
    return parser


def main(argv=None, *, default_dir: str | None = None,
         prog: str = "python -m torch_ntk.bench.models") -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the JSON payload."""
    parser = build_parser()
    args, argv = parse_suite_args(parser, argv, prog)
    t0 = time.perf_counter()
    rows = [run_case(case, args.repeats, args.quick, args.device) for case in CASES[args.quick]]
    payload = {"benchmark": "models", "machine": machine_info(args.device),
               "quick": args.quick, "repeats": args.repeats, "rows": rows,
               "wall_s": round(time.perf_counter() - t0, 1),
               "command": " ".join([prog, *argv])}
    out = args.out or os.path.join(default_dir or results_dir(), f"models_{args.device}.json")
    write_json(out, keep_runs(out, payload))
    print(render_models(payload))
    print(f"\nJSON: {out}")
    return payload


if __name__ == "__main__":
    main()
