"""torch_ntk's infinite-width kernels against neural-tangents (JAX), in one process.

neural-tangents 0.6.5 (its last release, frozen since early 2024) does not import on a
current JAX, so this suite runs in its own venv with jax 0.4.23, torch and this checkout
(``scripts/setup_nt_venv.sh`` makes it)::

    bash scripts/setup_nt_venv.sh                  # once: /work/nt-venv (NT_VENV=... elsewhere)
    PYTHONPATH=. /work/nt-venv/bin/python benchmarks/neural_tangents.py [--quick]
        [--threads T] [--repeats R] [--out PATH]

Without jax and neural-tangents the script exits (status 2) saying so; importing it (the
renderer does) never imports JAX.

Per case the same float32 or float64 inputs [N, 16] (images [N, 1, 8, 8] for the CNN),
x2 = None, both outputs (NNGP and NTK), NTK parametrization on both sides (``NTKLinear`` /
``NTKConv2d`` with σ_w = √2, σ_b = 0.1 ↔ ``stax.Dense`` / ``stax.Conv`` with W_std = √2,
b_std = 0.1: forward σ_w/√fan_in · W α + σ_b · b in both):

- ReLU MLP, depth 5 (five dense layers), N = 4000 and 1000;
- erf and GELU (exact) MLPs, depth 3, N = 1000;
- Mish, depth 3, N = 1000, float32: neural-tangents' ``ElementwiseNumerical`` at its
  default degree 25 (2-D Gauss–Hermite) against our numeric Hermite series (issue 31's
  target: ours ≥ 50× faster);
- a residual ReLU MLP of 10 dense layers (input layer, four blocks
  h + dense(relu(dense(relu(h)))) — ``stax.FanOut(2)``, ``stax.parallel``,
  ``stax.FanInSum`` — relu, readout), N = 1000;
- a CNN: three 3×3 SAME convolutions of 16 channels with ReLU, global average pooling, a
  dense readout, 1×8×8 images (NHWC for JAX), N = 100.

Ours: :func:`torch_ntk.analytic_kernels` on the ``torch.nn`` model (lifting included; the
residual MLP is a class whose forward torch.fx reads as a graph). Theirs: the network's
``kernel_fn`` under ``jax.jit``, results ``.block_until_ready()``; float64 runs inside
``jax.experimental.enable_x64()``. The first call of each (JAX: tracing and XLA
compilation) is the warm-up, excluded from the medians and recorded as ``nt_first_s``;
its outputs are the values checked, as max over NNGP and NTK of |ours − NT| / max |NT|
(in float64), off the diagonal and on it. Off the diagonal the bound is 1e-5 in float32
and 1e-10 in float64 for the closed forms, MISH_TOL for Mish (NT's quadrature error). On
the diagonal of a ReLU network the arc-cosine is ill-conditioned (the correlation is 1):
there the bound is (ReLU layers)·√ε (``tolerances``), and the ReLU MLP rows also give
each side's error against the diagonal's closed form (``relu_diagonal``), the Mish
rows each side's error against neural-tangents at degree 200 in float64
(``mish_accuracy``). The script
exits 1 after writing the JSON when a row disagrees. Then both are timed round after round
(``torch_ntk.bench.common.interleaved``), median of ``--repeats``.
neural-tangents computes all N² pairs, our op one triangle for x2 = None: "sym. factor"
(2N/(N+1)) is that part of the ratio, "× NT per pair" the ratio without it.

Threads: ``--threads T`` (default: 2, at most the CPUs this process may use). Before
torch or XLA start a thread pool the process is pinned to T CPUs
(``os.sched_setaffinity``: XLA's CPU client sizes its Eigen pool by the CPUs the
process may run on), ``OMP_NUM_THREADS`` / ``torch.set_num_threads(T)`` set torch's, and
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=true`` (false for T = 1) XLA's. The payload
records T, the CPUs pinned, ``XLA_FLAGS``, the versions of jax, jaxlib, neural-tangents,
numpy and torch, the machine (``torch_ntk.bench.common.machine_info``: CPU model, lscpu
vector flags, compiler) and the load average before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Run as a script, this file's folder heads sys.path and ``import neural_tangents`` would
# import this file: drop the folder, put the checkout's root first (its torch_ntk).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, ROOT)

SETUP_HINT = ("create the venv with `bash scripts/setup_nt_venv.sh`, then run "
              "`PYTHONPATH=. /work/nt-venv/bin/python benchmarks/neural_tangents.py`")
N0 = 16                   # input features of the MLPs
WIDTH = 512               # hidden width of the torch models (the limit does not depend on it)
CHANNELS = 16             # CNN channels
IMAGE = (1, 8, 8)         # CNN input (C, H, W)
W_STD, B_STD = math.sqrt(2.0), 0.1
TOL = {"float32": 1e-5, "float64": 1e-10}
# neural-tangents' ElementwiseNumerical integrates by 2-D Gauss–Hermite quadrature of
# degree 25; its own tests hold it to rtol 2e-3 against closed forms (doubled for the NTK).
# Measured (depth 3, 16 inputs, float64): 3.3e-3 on the diagonal, 6e-5 off it, against
# our series, which its degree 200 matches to 4e-11. The bound: NT's NTK rtol, 4e-3,
# rounded up to cover two nonlinear layers:
MISH_TOL = 1e-2
MISH_REF_DEG, MISH_REF_N = 200, 16  # the reference of a Mish row's accuracy fields

# (kind, activation, depth, N, dtypes); depth = number of dense layers (conv layers for cnn)
CASES = [
    ("mlp", "relu", 5, 4000, ("float32", "float64")),
    ("mlp", "relu", 5, 1000, ("float32", "float64")),
    ("mlp", "erf", 3, 1000, ("float32", "float64")),
    ("mlp", "gelu", 3, 1000, ("float32", "float64")),
    ("mlp", "mish", 3, 1000, ("float32",)),
    ("residual", "relu", 10, 1000, ("float32", "float64")),
    ("cnn", "relu", 3, 100, ("float32", "float64")),
]
QUICK_CASES = [
    ("mlp", "relu", 5, 64, ("float32", "float64")),
    ("mlp", "erf", 3, 32, ("float32", "float64")),
    ("mlp", "gelu", 3, 32, ("float32", "float64")),
    ("mlp", "mish", 3, 32, ("float32",)),
    ("residual", "relu", 10, 32, ("float32", "float64")),
    ("cnn", "relu", 3, 6, ("float32", "float64")),
]


# ---------------------------------------------------------------------------------------
# threads and the JAX stack


def pin_threads(threads: int) -> dict:
    """Pin this process to ``threads`` CPUs and set the thread knobs of torch and XLA
    (module doc); call before either starts a pool. Returns what was set."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads < 1 or threads > len(allowed):
        raise SystemExit(f"neural_tangents.py: --threads must be in 1..{len(allowed)} (the "
                         f"CPUs this process may use: {allowed}); got {threads}")
    cpus = allowed[:threads]
    os.sched_setaffinity(0, cpus)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    flag = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    os.environ["XLA_FLAGS"] = " ".join(
        [f for f in os.environ.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_cpu_multi_thread_eigen")] + [flag])
    import torch

    torch.set_num_threads(threads)
    return {"threads": threads, "cpus": cpus, "xla_flags": os.environ["XLA_FLAGS"],
            "torch_threads": torch.get_num_threads(),
            "how": "os.sched_setaffinity to the CPUs listed (XLA sizes its Eigen pool by "
                   "them), torch.set_num_threads, XLA_FLAGS"}


def load_jax():
    """(jax, jnp, neural_tangents, stax), or exit 2 with what to do when they are missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # neural-tangents imports tensorflow
    try:
        import jax
        import jax.experimental
        import jax.numpy as jnp
        import neural_tangents as nt
        from neural_tangents import stax
    except ImportError as error:
        sys.stderr.write(f"benchmarks/neural_tangents.py needs jax and neural-tangents "
                         f"({type(error).__name__}: {error}); {SETUP_HINT}\n")
        raise SystemExit(2)
    # its notes on ElementwiseNumerical's degree and on FanIn's independent inputs, which
    # the cases here meet (every branch has a Dense layer), once per layer and call
    warnings.filterwarnings("ignore", category=UserWarning, module=r"neural_tangents\.")
    return jax, jnp, nt, stax


def versions() -> dict:
    import jax
    import jaxlib
    import neural_tangents as nt
    import numpy
    import torch

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "neural_tangents": nt.__version__, "numpy": numpy.__version__,
            "torch": torch.__version__}


# ---------------------------------------------------------------------------------------
# the networks, each twice: torch (ours) and stax (theirs)


def _torch_act(name: str):
    from torch import nn

    from torch_ntk.activations import from_name

    modules = {"relu": nn.ReLU, "gelu": nn.GELU, "mish": nn.Mish}
    return modules[name]() if name in modules else from_name(name).module()


def _stax_act(name: str, stax, jnp, deg: int = 25):
    if name == "mish":
        return stax.ElementwiseNumerical(
            fn=lambda t: t * jnp.tanh(jnp.logaddexp(0.0, t)), deg=deg)
    return {"relu": stax.Relu, "erf": stax.Erf,
            "gelu": lambda: stax.Gelu(approximate=False)}[name]()


def _residual_class():
    """A residual MLP as a torch class (torch.fx lifts its forward as a graph)."""
    from torch import nn

    import torch_ntk as tn

    class ResidualMLP(nn.Module):
        def __init__(self, depth: int):
            super().__init__()
            dense = lambda n_in, n_out: tn.nn.NTKLinear(  # noqa: E731
                n_in, n_out, weight_std=W_STD, bias_std=B_STD)
            self.inp = dense(N0, WIDTH)
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.ReLU(), dense(WIDTH, WIDTH), nn.ReLU(), dense(WIDTH, WIDTH))
                for _ in range((depth - 2) // 2))
            self.out = dense(WIDTH, 1)

        def forward(self, x):
            h = self.inp(x)
            for block in self.blocks:
                h = h + block(h)
            return self.out(h.relu())

    return ResidualMLP


def torch_model(kind: str, act: str, depth: int):
    """The ``torch.nn`` network of a case (module doc), on the CPU in float32 (only its
    architecture and variances enter the limit)."""
    from torch import nn

    import torch_ntk as tn

    if kind == "mlp":
        layers = [tn.nn.NTKLinear(N0, WIDTH, weight_std=W_STD, bias_std=B_STD)]
        for k in range(1, depth):
            layers += [_torch_act(act), tn.nn.NTKLinear(
                WIDTH, 1 if k == depth - 1 else WIDTH, weight_std=W_STD, bias_std=B_STD)]
        return nn.Sequential(*layers)
    if kind == "residual":
        return _residual_class()(depth)
    layers, c_in = [], IMAGE[0]
    for _ in range(depth):
        layers += [tn.nn.NTKConv2d(c_in, CHANNELS, 3, padding=1, weight_std=W_STD,
                                   bias_std=B_STD), _torch_act(act)]
        c_in = CHANNELS
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               tn.nn.NTKLinear(CHANNELS, 1, weight_std=W_STD, bias_std=B_STD)]
    return nn.Sequential(*layers)


def stax_kernel_fn(kind: str, act: str, depth: int, stax, jnp, deg: int = 25):
    """The same network's neural-tangents ``kernel_fn`` (NTK parameterization; ``deg``:
    the quadrature degree of ``ElementwiseNumerical``, MLPs only)."""
    dense = lambda n: stax.Dense(n, W_std=W_STD, b_std=B_STD)  # noqa: E731
    if kind == "mlp":
        layers = [dense(WIDTH)]
        for k in range(1, depth):
            layers += [_stax_act(act, stax, jnp, deg), dense(1 if k == depth - 1 else WIDTH)]
    elif kind == "residual":
        block = stax.serial(
            stax.FanOut(2),
            stax.parallel(stax.Identity(), stax.serial(
                _stax_act(act, stax, jnp), dense(WIDTH), _stax_act(act, stax, jnp),
                dense(WIDTH))),
            stax.FanInSum())
        layers = [dense(WIDTH)] + [block] * ((depth - 2) // 2)
        layers += [_stax_act(act, stax, jnp), dense(1)]
    else:
        layers = []
        for _ in range(depth):
            layers += [stax.Conv(CHANNELS, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD),
                       _stax_act(act, stax, jnp)]
        layers += [stax.GlobalAvgPool(), dense(1)]
    return stax.serial(*layers)[2]


def case_name(kind: str, act: str, depth: int) -> str:
    if kind == "mlp":
        return f"{act} MLP, depth {depth}"
    if kind == "residual":
        return f"residual {act} MLP, depth {depth}"
    h, w = IMAGE[1:]
    return f"CNN {depth}×conv3×3 {act}, GAP, {IMAGE[0]}×{h}×{w}"


# ---------------------------------------------------------------------------------------
# one row


def rel_diffs(ours, theirs) -> tuple:
    """(diagonal, off-diagonal) max over NNGP and NTK of |ours − theirs| / max |theirs|,
    in float64; each output [N, N]."""
    import numpy as np

    diag = off = 0.0
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        d = np.abs(a - b) / np.abs(b).max()
        eye = np.eye(len(d), dtype=bool)
        diag, off = max(diag, float(d[eye].max())), max(off, float(d[~eye].max()))
    return diag, off


def relu_diagonal(x, depth: int) -> tuple:
    """The exact diagonal (NNGP, NTK) [N] of the ReLU MLP of depth ``depth``: at x1 = x2
    the correlation is 1, the arc-cosine angle 0, so per layer Σ ← σ_w²·Σ/2 + σ_b² and
    Θ ← Σ + σ_w²·Θ/2, from Σ = Θ = σ_w²·|x|²/n0 + σ_b² (float64, numpy)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    sigma = W_STD**2 * (x * x).sum(1) / x.shape[1] + B_STD**2
    theta = sigma.copy()
    for _ in range(depth - 1):
        sigma = W_STD**2 * sigma / 2 + B_STD**2
        theta = sigma + W_STD**2 * theta / 2
    return sigma, theta


def diagonal_error(kernels, exact) -> float:
    """max over NNGP and NTK of |diag(kernel) − exact| / max exact."""
    import numpy as np

    return max(float(np.abs(np.diag(np.asarray(k, dtype=np.float64)) - e).max() / e.max())
               for k, e in zip(kernels, exact))


def tolerances(kind: str, act: str, depth: int, dtype: str) -> tuple:
    """(off-diagonal, diagonal) tolerances of a row. On the diagonal of a ReLU network the
    correlation is 1 − δ with δ a rounding error ~ ε, where the arc-cosine angle
    √(2δ) moves by ~√ε: an implementation that does not snap it to 0 is off by up to
    ~√ε/π per ReLU layer in the NTK factor (π − θ)/π, so the diagonal bound is
    (ReLU layers)·√ε; elsewhere the bound is the row's tolerance."""
    import numpy as np

    off = MISH_TOL if act == "mish" else TOL[dtype]
    if act != "relu":
        return off, off
    relu_layers = depth if kind == "cnn" else depth - 1
    return off, float(f"{relu_layers * np.sqrt(np.finfo(dtype).eps):.2g}")


def mish_accuracy(kind: str, depth: int, x, k_ours, k_nt, jax_stack) -> dict:
    """Each side's error (max over NNGP and NTK, diagonal and off it, relative to the max)
    on the first MISH_REF_N inputs against neural-tangents' ElementwiseNumerical at degree
    MISH_REF_DEG in float64 (converged: see MISH_TOL)."""
    jax, jnp, _, stax = jax_stack
    m = min(MISH_REF_N, x.shape[0])
    with jax.experimental.enable_x64(True):
        ref = stax_kernel_fn(kind, "mish", depth, stax, jnp, deg=MISH_REF_DEG)(
            jnp.asarray(x[:m].double().numpy()), None, ("nngp", "ntk"))
    block = lambda ks: [k[:m, :m] for k in ks]  # noqa: E731
    return {"ref_err_ours": float(f"{max(rel_diffs(block(k_ours), ref)):.3g}"),
            "ref_err_nt": float(f"{max(rel_diffs(block(k_nt), ref)):.3g}"),
            "reference": f"NT ElementwiseNumerical deg {MISH_REF_DEG}, float64, "
                         f"first {m} inputs"}


def run_case(case: tuple, dtype: str, repeats: int, jax_stack) -> dict:
    """Check the values, then time both sides (module doc). Returns the row."""
    import torch

    import torch_ntk as tn
    from torch_ntk.bench.common import interleaved, symmetry_factor

    jax, jnp, _, stax = jax_stack
    kind, act, depth, n, _ = case
    g = torch.Generator().manual_seed(0)
    shape = (n, *IMAGE) if kind == "cnn" else (n, N0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(getattr(torch, dtype))
    model = torch_model(kind, act, depth)
    tol, diag_tol = tolerances(kind, act, depth, dtype)
    row = {"case": case_name(kind, act, depth), "kind": kind, "activation": act,
           "depth": depth, "N": n, "dtype": dtype, "x2": "None", "tol": tol,
           "diag_tol": diag_tol}

    def ours():
        k = tn.analytic_kernels(model, x, progress=False)
        return k.nngp, k.ntk

    with jax.experimental.enable_x64(dtype == "float64"):
        x_np = x.numpy()
        xj = jnp.asarray(x_np.transpose(0, 2, 3, 1) if kind == "cnn" else x_np)
        kfn = jax.jit(lambda a: stax_kernel_fn(kind, act, depth, stax, jnp)(
            a, None, ("nngp", "ntk")))

        def theirs():
            return jax.block_until_ready(kfn(xj))

        t0 = time.perf_counter()
        k_nt = theirs()
        row["nt_first_s"] = round(time.perf_counter() - t0, 4)
        k_ours = ours()
        row["nt_out_dtype"] = str(k_nt[1].dtype)
        diag, off = rel_diffs(k_ours, k_nt)
        row["offdiag_rel_diff"] = float(f"{off:.3g}")
        row["diag_rel_diff"] = float(f"{diag:.3g}")
        row["agree"] = bool(off <= tol and diag <= diag_tol and row["nt_out_dtype"] == dtype)
        if kind == "mlp" and act == "relu":
            exact = relu_diagonal(x.numpy(), depth)
            row["diag_exact_err_ours"] = float(f"{diagonal_error(k_ours, exact):.3g}")
            row["diag_exact_err_nt"] = float(f"{diagonal_error(k_nt, exact):.3g}")
        if act == "mish":
            row.update(mish_accuracy(kind, depth, x, k_ours, k_nt, jax_stack))
        times = interleaved({"ours": ours, "nt": theirs}, repeats, "cpu")
    t_ours, t_nt = statistics.median(times["ours"]), statistics.median(times["nt"])
    sym = symmetry_factor(n)
    row.update({"ours_s": round(t_ours, 5), "nt_s": round(t_nt, 5),
                "ratio": round(t_nt / t_ours, 2), "sym_factor": round(sym, 2),
                "ratio_per_pair": round(t_nt / t_ours / sym, 2), "repeats": repeats})
    print(row, flush=True)
    return row


# ---------------------------------------------------------------------------------------
# the table


COLUMNS = [("case", "case"), ("N", "N"), ("dtype", "dtype"), ("ours_s", "torch_ntk s"),
           ("nt_s", "neural-tangents s"), ("ratio", "× NT"), ("sym_factor", "sym. factor"),
           ("ratio_per_pair", "× NT per pair"), ("nt_first_s", "NT first call s"),
           ("offdiag_rel_diff", "rel diff off-diag"), ("tol", "tol"),
           ("diag_rel_diff", "rel diff diag"), ("diag_tol", "diag tol")]


def render_neural_tangents(payload: dict) -> str:
    """The markdown table of a neural_tangents_cpu.json payload, its conditions (machine,
    threads, versions, load) and issue 31's Mish target judged on the measured ratio."""
    from torch_ntk.bench.common import machine_line, markdown_table

    rows = payload["rows"]
    v, t = payload["versions"], payload["threads"]
    quick = " (quick: a smoke run, not a measurement)" if payload.get("quick") else ""
    lines = [markdown_table(rows, COLUMNS), "",
             f"{machine_line(payload['machine'])}; jax {v['jax']}, jaxlib {v['jaxlib']}, "
             f"neural-tangents {v['neural_tangents']}, numpy {v['numpy']}; {t['threads']} "
             f"thread(s) each (CPUs {t['cpus']}, `XLA_FLAGS={t['xla_flags']}`); load average "
             f"{payload['load_before']:.1f} before, {payload['load_after']:.1f} after; run "
             f"{payload['wall_s']:.0f} s{quick}.", ""]
    bad = [r for r in rows if not r["agree"]]
    lines.append(f"- Values: {len(rows) - len(bad)} of {len(rows)} rows agree within their "
                 "tolerance" + (": " + ", ".join(f"{r['case']} {r['dtype']} N = {r['N']}"
                                                 for r in bad) + " do not." if bad else "."))
    for r in rows:
        if "diag_exact_err_ours" in r:
            lines.append(f"- {r['case']}, {r['dtype']}, N = {r['N']}: diagonal against its "
                         f"closed form (correlation 1): torch_ntk {r['diag_exact_err_ours']:.2g}, "
                         f"neural-tangents {r['diag_exact_err_nt']:.2g} (relative).")
        if r["activation"] == "mish":
            if "ref_err_ours" in r:
                lines.append(f"- Mish N = {r['N']}, {r['dtype']}: error against "
                             f"{r['reference']}: torch_ntk {r['ref_err_ours']:.2g}, "
                             f"neural-tangents at degree 25 {r['ref_err_nt']:.2g} (relative).")
            verdict = ("not judged on a quick run" if payload.get("quick")
                       else "met" if r["ratio"] >= 50 else "missed")
            lines.append(f"- Mish N = {r['N']}: neural-tangents' ElementwiseNumerical time / "
                         f"torch_ntk's = {r['ratio']} (issue 31's target ≥ 50: {verdict}).")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/neural_tangents.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N (a smoke run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and XLA alike (default: 2, at most the CPUs "
                             "this process may use)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per case (default 5; 2 with --quick)")
    parser.add_argument("--out", default=None, help="JSON path (default "
                        "benchmarks/results/neural_tangents_cpu.json)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f"neural_tangents.py: --repeats must be at least 1; got {args.repeats}")
    threads = args.threads or min(2, len(os.sched_getaffinity(0)))
    pinned = pin_threads(threads)
    jax_stack = load_jax()
    from torch_ntk.bench.common import load_average, machine_info, write_json

    repeats = args.repeats or (2 if args.quick else 5)
    t0 = time.perf_counter()
    load_before = load_average()
    rows = [run_case(case, dtype, repeats, jax_stack)
            for case in (QUICK_CASES if args.quick else CASES) for dtype in case[4]]
    payload = {"benchmark": "neural_tangents", "machine": machine_info("cpu"),
               "versions": versions(), "threads": pinned, "quick": args.quick,
               "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
               "load_before": load_before, "load_after": load_average(),
               "command": " ".join(["benchmarks/neural_tangents.py",
                                    *(sys.argv[1:] if argv is None else argv)])}
    out = args.out or os.path.join(HERE, "results", "neural_tangents_cpu.json")
    write_json(out, payload)
    print(render_neural_tangents(payload))
    print(f"\nJSON: {out}")
    bad = [r for r in rows if not r["agree"]]
    if bad:
        sys.stderr.write(f"neural_tangents.py: {len(bad)} row(s) disagree with neural-tangents "
                         "beyond their tolerance (see the rel_diff and tol fields in the JSON)\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
