"""The benchmark suites behind ``torch-ntk bench`` (``benchmarks/*.py`` are thin scripts
over them): each module's ``main(argv)`` runs one suite, writes its JSON and prints a
markdown table.

- :mod:`torch_ntk.bench.analytic` — the fused analytic-kernel op against the eager and
  compiled plain-torch recursion;
- :mod:`torch_ntk.bench.empirical` — the finite-width NTK: the fused structured op
  against the GEMMs alone, the eager and compiled composites, torch.func, and its
  TF32/bf16 modes with their error against float64;
- :mod:`torch_ntk.bench.tracker` — KernelDriftTracker's cost against a training step;
- :mod:`torch_ntk.bench.cnn` — the fused infinite-width CNN kernel op against the eager
  plain-torch recursion, and its FLOP/s against a float32 matmul;
- :mod:`torch_ntk.bench.cnn_structured` — the structured finite-width CNN NTK against
  torch.func's vmap(jacrev), ``method="jacobian"`` and the Gram GEMMs alone;
- :mod:`torch_ntk.bench.graph` — graph kernels on the fused op: a residual CNN against
  the torch walker, a residual MLP against the chain MLP op.

Timings are medians after warm-up (CUDA events on a GPU); ratios against baselines run
in the same process are the claim, never an assertion in a test.
"""

SUITES = ("analytic", "empirical", "tracker", "cnn", "cnn_structured", "graph")

# The help of ``torch-ntk bench``.
HELP = """\
Run the benchmark suites of torch_ntk.bench (the same code as benchmarks/*.py):

  analytic   the fused infinite-width kernel op against the plain-torch recursion,
             eager and under torch.compile
  empirical  the finite-width NTK: the fused structured op against the Gram GEMMs
             alone, the eager and compiled composites and torch.func; its TF32/bf16
             modes with their speedup and error against float64
  tracker    KernelDriftTracker's cost against a training step
  cnn        the fused infinite-width CNN kernel op (CNTK-GAP, CNTK-Flatten) against
             the eager plain-torch recursion; its FLOP/s against a float32 matmul
  cnn_structured  the structured finite-width CNN NTK against vmap(jacrev), the
             Jacobian method and the Gram GEMMs alone (CPU)
  graph      graph kernels on the fused op: a residual CNN (two blocks, GAP) against
             the torch walker, a residual MLP (depth 10) against the chain MLP op

Each suite writes OUT/<suite>_<device>.json and prints its markdown table; times are
medians after warm-up (CUDA events on a GPU). --quick runs small cases (seconds to a
minute on a CPU). A suite that fails is reported and the others still run (exit 1).
"""

__all__ = ["SUITES", "run_suites"]


def run_suites(suites, device: str, *, out: str, quick: bool = False, repeats=None,
               compile_backend: str = "inductor", cases=None, prog: str = "torch-ntk bench"
               ) -> list:
    """Run each suite's ``main`` in turn (``torch-ntk bench``), writing
    ``out/<suite>_<device>.json``; a failing suite is reported (traceback on stderr) and
    the others still run. Returns the names of the suites that failed."""
    import importlib
    import os
    import time
    import traceback

    failed = []
    for suite in suites:
        argv = ["--device", device] + (["--quick"] if quick else [])
        if repeats is not None:
            argv += ["--repeats", str(repeats)]
        if suite in ("analytic", "empirical"):
            argv += ["--compile-backend", compile_backend]
        if suite == "empirical" and cases is not None:
            argv += ["--cases", cases]
        if suite == "empirical" and quick:
            argv += ["--quiet-wait", "0"]  # a smoke run does not wait for a quiet machine
        module = importlib.import_module(f"{__name__}.{suite}")
        print(f"== bench {suite}: {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            module.main(argv, default_dir=out, prog=f"{prog} {suite}")
        except KeyboardInterrupt:
            raise
        except Exception:  # one failing suite must not cost the others' results
            traceback.print_exc()
            failed.append(suite)
            print(f"-- bench {suite} FAILED after {time.perf_counter() - t0:.1f} s", flush=True)
            continue
        print(f"-- bench {suite} done in {time.perf_counter() - t0:.1f} s; wrote "
              f"{os.path.join(out, f'{suite}_{device}.json')}\n", flush=True)
    return failed
