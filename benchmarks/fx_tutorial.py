"""The CNN of PyTorch's NTK tutorial, lifted through torch.fx, against the tutorial's own code.

    python benchmarks/fx_tutorial.py [--repeats 5] [--out benchmarks/results/fx_tutorial_cpu.json]

The tutorial (pytorch.org/tutorials/intermediate/neural_tangent_kernels.html) writes a
CNN class — conv1 → x.relu() → conv2 → x.relu() → conv3 → x.flatten(1) → fc, 3×32×32
inputs, 32 channels, 10 outputs — and computes its empirical NTK between 20 and 5 images
(float32) by a Jacobian contraction (``vmap(jacrev)`` then einsum) and by NTK-vector
products (``vmap`` of vjp/jvp over the output basis). Both functions are copied below
as the tutorial writes them. Here, in one process, interleaved round after round:

- ``torch_ntk.empirical_ntk(model, x_train, x_test, mode)``: the class lifts through
  torch.fx, so the structured method runs (``info.method == "structured"``);
- ``empirical_ntk(..., method="jacobian")``: what the same call ran before the class lifted;
- the tutorial's Jacobian contraction and NTK-vector products (``compute`` = mode).

Modes "full" [20, 5, 10, 10] and "trace" [20, 5] (torch_ntk's trace is the mean over the
10 outputs, the tutorial's their sum: compared after dividing by 10). Errors are relative
(max |K − K64| / max |K64|) against the tutorial's Jacobian contraction of the same
network in float64. Times: by the wall clock with torch's default threads, then, steadier
on a shared machine, CPU seconds (``time.process_time``) with one thread. The JSON
records the load average and the CPU; the table in docs/benchmarks.md is
:func:`render_fx_tutorial` of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's torch_ntk

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, jacrev, jvp, vjp, vmap  # noqa: E402

import torch_ntk as tn  # noqa: E402
from torch_ntk.bench.common import (interleaved, machine_info, markdown_table,  # noqa: E402
                                    summary, write_json)


class CNN(nn.Module):
    """The tutorial's network, as the tutorial writes it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, (3, 3))
        self.conv2 = nn.Conv2d(32, 32, (3, 3))
        self.conv3 = nn.Conv2d(32, 32, (3, 3))
        self.fc = nn.Linear(21632, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = x.relu()
        x = self.conv2(x)
        x = x.relu()
        x = self.conv3(x)
        x = x.flatten(1)
        x = self.fc(x)
        return x


def empirical_ntk_jacobian_contraction(fnet_single, params, x1, x2, compute):
    """The tutorial's Jacobian contraction."""
    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    einsum_expr = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM",
                   "diagonal": "Naf,Maf->NMa"}[compute]
    result = torch.stack([torch.einsum(einsum_expr, j1, j2) for j1, j2 in zip(jac1, jac2)])
    return result.sum(0)


def empirical_ntk_ntk_vps(func, params, x1, x2, compute):
    """The tutorial's NTK-vector products."""
    def get_ntk(x1, x2):
        def func_x1(params):
            return func(params, x1)

        def func_x2(params):
            return func(params, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec):
            vjps = vjp_fn(vec)
            _, jvps = jvp(func_x2, (params,), vjps)
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype,
                          device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)
    if compute == "full":
        return result
    if compute == "trace":
        return torch.einsum("NMKK->NM", result)
    return torch.einsum("NMKK->NMK", result)


def tutorial_functions(model):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    return params, fnet_single


METHODS = {
    "structured": "torch_ntk.empirical_ntk (structured, lifted by torch.fx)",
    "jacobian": "torch_ntk.empirical_ntk(method='jacobian') (the fallback before)",
    "tutorial_jacobian": "tutorial: Jacobian contraction",
    "tutorial_ntk_vps": "tutorial: NTK-vector products",
}


def measure(repeats: int) -> dict:
    torch.manual_seed(0)
    model = CNN()
    x_train, x_test = torch.randn(20, 3, 32, 32), torch.randn(5, 3, 32, 32)
    params, fnet_single = tutorial_functions(model)
    model64 = CNN().double()
    model64.load_state_dict(model.state_dict())
    params64, fnet64 = tutorial_functions(model64)
    n_out = 10
    modes = {}
    for mode in ("full", "trace"):
        scale = n_out if mode == "trace" else 1  # torch_ntk's trace is a mean over outputs
        reference = empirical_ntk_jacobian_contraction(
            fnet64, params64, x_train.double(), x_test.double(), mode) / scale
        calls = {
            "structured": lambda: tn.empirical_ntk(model, x_train, x_test, mode=mode,
                                                   progress=False),
            "jacobian": lambda: tn.empirical_ntk(model, x_train, x_test, mode=mode,
                                                 method="jacobian", progress=False),
            "tutorial_jacobian": lambda: empirical_ntk_jacobian_contraction(
                fnet_single, params, x_train, x_test, mode) / scale,
            "tutorial_ntk_vps": lambda: empirical_ntk_ntk_vps(
                fnet_single, params, x_train, x_test, mode) / scale,
        }
        _, info = tn.empirical_ntk(model, x_train, x_test, mode=mode, progress=False,
                                   return_info=True)
        errors = {}
        for key, fn in calls.items():  # also the warm-up
            k = fn()
            errors[key] = float((k.double() - reference).abs().max() / reference.abs().max())
        times = interleaved(calls, repeats, "cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            cpu = {key: [] for key in calls}
            for _ in range(repeats):
                for key, fn in calls.items():
                    t0 = time.process_time()
                    fn()
                    cpu[key].append(time.process_time() - t0)
        finally:
            torch.set_num_threads(threads)
        base = summary(times["structured"])["median_s"]
        base_cpu = summary(cpu["structured"])["median_s"]
        modes[mode] = {
            "method_chosen": info.method, "reason": info.reason,
            "contractions": list(info.contractions or []),
            "rows": [{"key": key, "method": METHODS[key], **summary(times[key]),
                      "vs_structured": summary(times[key])["median_s"] / base,
                      "cpu_1thread": summary(cpu[key]),
                      "cpu_vs_structured": summary(cpu[key])["median_s"] / base_cpu,
                      "rel_error_vs_float64": errors[key]} for key in calls],
        }
    return modes


def render_fx_tutorial(payload: dict) -> str:
    """The docs table: per mode and method, median seconds, the ratio to torch_ntk's
    structured time and the error against float64."""
    rows = []
    for mode, case in payload["modes"].items():
        for row in case["rows"]:
            cpu = row["cpu_1thread"]
            rows.append({
                "mode": mode, "method": row["method"],
                "cpu": f"{cpu['median_s']:.3f} ({cpu['min_s']:.3f}–{cpu['max_s']:.3f})",
                "cpu_ratio": f"{row['cpu_vs_structured']:.2f}",
                "wall": f"{row['median_s']:.2f} ({row['min_s']:.2f}–{row['max_s']:.2f})",
                "ratio": f"{row['vs_structured']:.2f}",
                "error": f"{row['rel_error_vs_float64']:.1e}",
            })
    machine = payload["machine"]
    table = markdown_table(rows, [
        ("mode", "mode"), ("method", "method"),
        ("cpu", "CPU s, 1 thread: median (min–max)"), ("cpu_ratio", "÷ torch_ntk (CPU)"),
        ("wall", f"wall s, {machine['torch_threads']} threads: median (min–max)"),
        ("ratio", "÷ torch_ntk (wall)"), ("error", "rel. error vs float64")])
    load = payload["load_average"]
    return (f"{table}\n\n{payload['repeats']} interleaved repeats per method after a warm-up, "
            f"first by the wall clock, then by CPU time (`time.process_time`) with "
            f"`torch.set_num_threads(1)`; load average {load['before'][0]:.1f} before, "
            f"{load['after'][0]:.1f} after (1-minute); {machine.get('cpu_model', 'CPU')}, "
            f"{machine['cpu_count']} cores, torch {machine['torch']}.")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/fx_tutorial.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "fx_tutorial_cpu.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"argument --repeats: must be at least 1; got {args.repeats}")
    before = os.getloadavg()
    modes = measure(args.repeats)
    payload = {"suite": "fx_tutorial", "machine": machine_info("cpu"), "repeats": args.repeats,
               "shapes": {"x_train": [20, 3, 32, 32], "x_test": [5, 3, 32, 32], "n_out": 10,
                          "dtype": "float32"},
               "load_average": {"before": list(before), "after": list(os.getloadavg())},
               "modes": modes}
    write_json(args.out, payload)
    print(render_fx_tutorial(payload))
    return payload


if __name__ == "__main__":
    main()
