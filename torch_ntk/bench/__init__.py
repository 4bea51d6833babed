"""The benchmark suites behind ``torch-ntk bench`` (``benchmarks/*.py`` are thin scripts
over them): each module's ``main(argv)`` runs one suite, writes its JSON and prints a
markdown table.

- :mod:`torch_ntk.bench.analytic` — the fused analytic-kernel op against the eager and
  compiled plain-torch recursion;
- :mod:`torch_ntk.bench.empirical` — the finite-width NTK: the fused structured op
  against the GEMMs alone, the eager and compiled composites, torch.func, and its
  TF32/bf16 modes with their error against float64;
- :mod:`torch_ntk.bench.tracker` — KernelDriftTracker's cost against a training step.

Timings are medians after warm-up (CUDA events on a GPU); ratios against baselines run
in the same process are the claim, never an assertion in a test.
"""

SUITES = ("analytic", "empirical", "tracker")

__all__ = ["SUITES"]
