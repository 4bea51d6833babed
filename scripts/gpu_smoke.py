"""Every compiled op once on small CUDA inputs, against the CPU float64 result.

Run by scripts/gpu_check.sh, also under compute-sanitizer (memcheck, with --small:
without the large symmetric case, whose row blocks and mirror pass take long under the
sanitizer). Sizes are not multiples of the CUDA tiles, so edge tiles are exercised.
Exits 1 on any mismatch.
"""

import sys

import torch

import torch_ntk as tn


def rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max())


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    torch.manual_seed(0)
    failures = []
    for name in ("relu", "erf", "tanh", "selu"):
        spec = tn.mlp_spec([5, 16, 16, 16, 1], name, bias_std=0.2)
        x1 = torch.randn(37, 5, dtype=torch.float64)
        x2 = torch.randn(45, 5, dtype=torch.float64)
        for b in (None, x2):
            ref = tn.analytic_kernels(spec, x1, b, quadrature_degree=12)
            for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
                out = tn.analytic_kernels(spec, x1.to("cuda", dtype),
                                          None if b is None else b.to("cuda", dtype),
                                          quadrature_degree=12)
                for field in ("nngp", "ntk"):
                    err = rel(getattr(out, field), getattr(ref, field))
                    label = f"analytic {name} {field} {dtype} {'sym' if b is None else 'rect'}"
                    print(f"{label}: {err:.2e}")
                    if not err <= tol:
                        failures.append(label)
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    for act_id in range(12):
        for derivative in (False, True):
            ref = tn.ops.activation(x, act_id, 0.7, derivative)
            out = tn.ops.activation(x.cuda(), act_id, 0.7, derivative)
            if not rel(out, ref) <= 1e-12:
                failures.append(f"activation {act_id} derivative={derivative}")
    if hasattr(tn, "empirical_ntk"):
        for widths in ([5, 33, 33, 3], [5, 70, 1]):
            model = tn.ntk_mlp(widths, "tanh").double()
            x1, x2 = torch.randn(29, 5, dtype=torch.float64), torch.randn(18, 5, dtype=torch.float64)
            for mode in ("full", "trace", "diagonal"):
                ref = tn.empirical_ntk(model, x1, x2, mode=mode, method="structured")
                for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
                    m = model.to("cuda", dtype)
                    out = tn.empirical_ntk(m, x1.to("cuda", dtype), x2.to("cuda", dtype), mode=mode,
                                           method="structured")
                    model = model.cpu().double()
                    err = rel(out, ref)
                    label = f"structured {widths} {mode} {dtype}"
                    print(f"{label}: {err:.2e}")
                    if not err <= tol:
                        failures.append(label)
        # Reduced precisions: tensor-core products against the CPU emulation (same
        # rounded operands, float32 accumulation): equal up to accumulation order.
        model = tn.ntk_mlp([5, 64, 64, 3], "relu")
        x1, x2 = torch.randn(70, 5), torch.randn(50, 5)
        for precision in ("bf16", "bf16x3"):
            for b in (None, x2):
                ref = tn.empirical_ntk(model, x1, b, precision=precision)
                out = tn.empirical_ntk(model.cuda(), x1.cuda(), None if b is None else b.cuda(),
                                       precision=precision)
                model = model.cpu()
                err = rel(out, ref)
                label = f"structured {precision} {'sym' if b is None else 'rect'}"
                print(f"{label}: {err:.2e}")
                if not err <= 1e-5:
                    failures.append(label)
        if "--small" not in sys.argv:
            # From 2048 samples the symmetric CUDA path runs in row blocks and mirrors.
            model = tn.ntk_mlp([5, 24, 24, 2], "gelu").double()
            x = torch.randn(4500, 5, dtype=torch.float64)
            ref = tn.empirical_ntk(model, x, mode="full", method="structured")
            out = tn.empirical_ntk(model.cuda(), x.cuda(), mode="full", method="structured",
                                   progress=False)
            err = rel(out, ref)
            symmetric = torch.equal(out, out.permute(1, 0, 3, 2))
            print(f"structured blocked symmetric N=4500: {err:.2e}, exactly symmetric {symmetric}")
            if not (err <= 1e-12 and symmetric):
                failures.append("structured blocked symmetric")
    # CNN kernels: the fused CNN op on CUDA against its CPU backend (plane and diagonal paths).
    from torch import nn

    for readout in ("gap", "flatten"):
        tail = ([nn.AdaptiveAvgPool2d(1), nn.Flatten(), tn.NTKLinear(6, 1)] if readout == "gap"
                else [nn.Flatten(), tn.NTKLinear(6 * 16, 1)])
        model = nn.Sequential(tn.nn.NTKConv2d(2, 6, 3, padding="same"), nn.ReLU(),
                              tn.nn.NTKConv2d(6, 6, 3, padding=1, padding_mode="circular"),
                              nn.Tanh(), *tail).double()
        x1, x2 = torch.randn(9, 2, 4, 4, dtype=torch.float64), torch.randn(7, 2, 4, 4,
                                                                             dtype=torch.float64)
        for b in (None, x2):
            ref = tn.analytic_kernels(model, x1, b, quadrature_degree=12)
            out = tn.analytic_kernels(model.cuda(), x1.cuda(), None if b is None else b.cuda(),
                                      quadrature_degree=12)
            model = model.cpu()
            for field in ("nngp", "ntk"):
                err = rel(getattr(out, field), getattr(ref, field))
                label = f"cnn {readout} {field} {'sym' if b is None else 'rect'}"
                print(f"{label}: {err:.2e}")
                if not err <= 1e-12:
                    failures.append(label)
    torch.cuda.synchronize()
    print("FAILED: " + ", ".join(failures) if failures else "all CUDA smoke checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
