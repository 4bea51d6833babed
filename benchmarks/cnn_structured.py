"""Structured CNN NTK against method="jacobian" (best of 2, alternating), one process.

Width-128, depth-3 conv CNN (3x3 "same", ReLU), global average pooling and a dense readout,
8x8x1 images, float32, CPU. Usage: python benchmarks/cnn_structured.py N n_L trace,full
(issue 14's case: 256 10 trace,full). Prints the times, the ratio and the relative error.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch  # noqa: E402
from torch import nn  # noqa: E402

import torch_ntk as tn  # noqa: E402
from torch_ntk.nn import NTKConv2d, NTKLinear  # noqa: E402
torch.manual_seed(0)
N, n_out, modes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
w = 128
model = nn.Sequential(NTKConv2d(1, w, 3, padding="same"), nn.ReLU(), NTKConv2d(w, w, 3, padding="same"), nn.ReLU(),
                      NTKConv2d(w, w, 3, padding="same"), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), NTKLinear(w, n_out))
x = torch.randn(N, 1, 8, 8)
print(f"threads={torch.get_num_threads()} N={N} n_L={n_out} params={sum(p.numel() for p in model.parameters())}", flush=True)
for mode in modes:
    times = {"structured": [], "jacobian": []}
    for rep in range(2):
        for method in times:
            t = time.perf_counter()
            k, info = tn.empirical_ntk(model, x, mode=mode, method=method, progress=False, return_info=True)
            times[method].append(time.perf_counter() - t)
            if method == "structured": ks, si = k, info
            else: kj = k
            del k
    ts, tj = min(times["structured"]), min(times["jacobian"])
    err = ((ks - kj).abs().max() / kj.abs().max()).item()
    print(f"mode={mode} structured {ts:.2f}s {times['structured']} ({si.contractions}, chunk {si.row_chunk}, blocks {si.blocks}) "
          f"jacobian {tj:.2f}s {times['jacobian']} ratio {tj/ts:.2f}x rel.err {err:.1e}", flush=True)
