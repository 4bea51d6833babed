"""Reproductions of the experiments of Jacot, Gabriel & Hongler (NeurIPS 2018), §6, and the demo.

One module per figure, each with a frozen ``Config`` dataclass (the paper's settings as
defaults, ``QUICK`` overrides for a run of about a minute on a CPU), ``run(config,
out=None, progress=False)`` returning the numbers as a JSON-ready dict (and writing
``<figure>.json`` and ``<figure>.png`` into ``out``), ``report(payload)`` (the lines the
command prints) and, where it needs an optional dependency, ``missing_requirements()``
(what to install, or None). ``torch-ntk reproduce <figure> ...`` runs them:

- :mod:`.figure1` — the NTK converges to Θ∞ as width grows and moves less in training;
- :mod:`.figure2` — trained networks against the limiting Gaussian process;
- :mod:`.figure3` — kernel principal components of handwritten digits (scikit-learn's
  bundled digits, the ``digits`` extra) and convergence along one of them;
- :mod:`.cntk_digits` (``cntk-digits``) — kernel regression with convolutional NTKs
  against trained CNNs on small training sets of digits (Arora et al., 2020);
- :mod:`.kip_digits` (``kip-digits``) — Kernel Inducing Points: 10 or 50 support images
  learned through the differentiable NTK of an MLP and a CNN (Nguyen, Chen & Lee, 2021);
- :mod:`.classification` — networks trained with cross-entropy on a few digit classes
  against kernel gradient descent with Θ₀ and Θ∞ (the paper's §3, by an ODE solver);
- :mod:`.demo` — the ``torch-ntk demo`` command.

Example::

    >>> from torch_ntk.experiments import figure1
    >>> payload = figure1.run(figure1.Config(widths=(50, 500), inits=3, steps=20))
    >>> payload["summary"]["widths"]["500"]["drift"] < payload["summary"]["widths"]["50"]["drift"]
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

FIGURES = ("figure1", "figure2", "figure3")          # the paper's; ``reproduce all`` runs them
EXPERIMENTS = FIGURES + ("cntk-digits", "classification", "kip-digits")

# The help of ``torch-ntk reproduce``.
REPRODUCE_HELP = """\
Reproduce the experiments of Jacot, Gabriel & Hongler (NeurIPS 2018), §6:

  figure1  Θ(x0, x) on the unit circle of depth-4 ReLU networks, widths 500 and 10000,
           10 initializations each, at init and after 200 GD steps, against Θ∞
  figure2  networks of widths 50 and 1000 trained on 4 points of the circle (1000 steps)
           against the 10/50/90th percentiles of the limiting Gaussian process
  figure3  kernel principal components of handwritten digits with a wide network's
           NTK, and networks trained along the 2nd component (straight line at n = ∞)

and, not part of "all", the small-data comparison of Arora et al. (2020) and §3 for a
non-quadratic cost:

  cntk-digits  test accuracy of kernel regression with CNTK-GAP, CNTK-Flatten, a residual
           CNTK (WideResNet-style), Myrtle-5, the MLP NTK and NNGP against trained CNNs
           of widths 16, 64, 128, on 20 … 1000 of
           scikit-learn's 8×8 digits (estimated 12 min on 2 idle CPU cores; --quick 2 min)
  classification  networks of widths 64 … 2048 (4 inits, 400 steps) trained by
           full-batch GD with cross-entropy on 4 digit classes against kernel gradient
           descent (ODE solver) with Θ₀ and Θ∞ from their own initial function: logit and
           accuracy gaps over training and their slope against width (needs torchdiffeq,
           the ode extra; 21 min on 2 shared CPU cores, 9 min of CPU time; --quick:
           widths 64, 256, 1024, 2 inits, 200 steps, 71 s of CPU time)
  kip-digits  Kernel Inducing Points (Nguyen, Chen & Lee, 2021): 10 and 50 support
           images learned by Adam through the MLP NTK and the CNTK (flatten readout),
           test accuracy against the same number of random real digits and against all
           training digits, 5 seeds (--quick: 10 images, 2 seeds, 100 steps, 28 s of
           CPU time with --threads 1; prefer --threads 1, the tensors are small)

Each figure writes <figure>.png and <figure>.json (every number behind it,
the settings, run times and the machine) into --out. Defaults are the paper's settings:
on 2 CPU cores figure1 takes about 50 min and figure3 about 13 min (width 10000), figure2
about 2 min; --quick takes about a minute each; --device cuda runs them on a GPU.

figure3, cntk-digits, kip-digits and classification need scikit-learn's bundled digits: pip install
'torch-ntk[digits]' (classification also torchdiffeq: 'torch-ntk[digits,ode]').
"""


def load(name: str) -> ModuleType:
    """The module of experiment ``name`` (one of EXPERIMENTS, or "demo")."""
    if name not in EXPERIMENTS + ("demo",):
        raise ValueError(f"unknown experiment {name!r}; available: "
                         f"{', '.join(EXPERIMENTS + ('demo',))}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
