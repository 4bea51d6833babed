"""Monte-Carlo kernels and the random-features view (Jacot et al. §3.1).

A kernel K is approximated by P random functions f^(p) with E[f^(p)(x) f^(p)(x′)] = K:
the Gram (1/P) Σ_p f^(p)(x) f^(p)(x′) tends to K as P → ∞, with an error ∝ P^−½.
Randomly initialized networks are such random functions, twice over:

- **Across networks.** Averaging the empirical kernels of P independently drawn
  networks estimates their mean; :func:`monte_carlo_kernels` does this, with standard
  errors, for any model (the only way to get a kernel for architectures without a
  closed-form limit: a user's activation, LayerNorm, anything that does not lift).
- **Within one network.** A network of hidden width n is itself a random-feature
  model with about n features: its last hidden layer gives the features of the NNGP,
  its parameter gradients those of the NTK (:func:`random_features`). So the estimate
  from P networks of width n behaves like one from ~nP random features: its error
  against the infinite-width kernel is ≈ C/√(nP) plus a finite-width bias O(1/n)
  (zero for one hidden layer, where E over the network is exactly the limit).
  :func:`convergence_study` measures both laws and fits their log–log slopes.

Normalization (the same everywhere here, so the means compare directly with
:func:`torch_ntk.analytic_kernels`, whose [N1, N2] kernels stand for K ⊗ Id_{n_L}):

    NNGP sample: f(x1)ᵀ f(x2) / n_L = (1/n_L) Σ_k f_k(x1) f_k(x2)     → Σ^(L)(x1, x2)
    NTK  sample: empirical_ntk(model, x1, x2, mode="trace")
                 = (1/n_L) Σ_k Θ_kk(x1, x2)                           → Θ∞^(L)(x1, x2)

i.e. means over the n_L outputs, never sums. Seeds: sample i is the model
``model_fn(base_seed + i)``, built right after torch's CPU generator (and those of the
initialized CUDA devices) is seeded with ``base_seed + i``; the caller's generator
states are restored afterwards, so the results depend on the seeds only and the
caller's random stream is left exactly as it was.

Memory: samples are drawn, evaluated and folded one at a time into running float64
moments (Welford's update), so a run holds about four N1·N2 float64 arrays per kernel
(mean, sum of squared deviations, the sample, one temporary) however many samples it
takes, plus one model and what ``empirical_ntk`` uses within ``memory_budget``. Runs
over disjoint seeds combine exactly with :meth:`MonteCarloKernels.merge`, so a long
estimate can also be built in pieces or parallel jobs.

Example::

    >>> import torch, torch_ntk
    >>> x = torch.randn(6, 3, dtype=torch.float64)
    >>> make = lambda seed: torch_ntk.ntk_mlp([3, 256, 256, 1], "relu", dtype=torch.float64)
    >>> mc = torch_ntk.monte_carlo_kernels(make, x, n_samples=32)
    >>> mc.ntk.shape, mc.ntk_stderr.shape, mc.n_samples, mc.method
    (torch.Size([6, 6]), torch.Size([6, 6]), 32, 'structured')
    >>> z = (mc.ntk - torch_ntk.analytic_kernels(make(0), x).ntk) / mc.ntk_stderr
"""

from __future__ import annotations

import collections
from typing import Iterator, Optional, Sequence, Union

from torch import Tensor

from .convergence import ConvergenceRecord, ConvergenceStudy, SlopeFit, convergence_study
from .samples import NNGP_ESTIMATORS, ModelFn, MonteCarloKernels, RunningEstimate
from .random_features import random_features, random_network
from .._utils.runtime import progress_bar
from .._utils.validation import check_increasing_ints, check_int

__all__ = [
    "ConvergenceRecord",
    "ConvergenceStudy",
    "MonteCarloKernels",
    "NNGP_ESTIMATORS",
    "SlopeFit",
    "convergence_study",
    "iter_monte_carlo_kernels",
    "monte_carlo_kernels",
    "random_features",
    "random_network",
]


# ---------------------------------------------------------------------------------
# public entry points


def monte_carlo_kernels(
    model_fn: ModelFn,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    n_samples: Optional[int] = None,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    *,
    base_seed: int = 0,
    nngp_estimator: str = "outputs",
    method: str = "auto",
    chunk_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    progress: Optional[bool] = None,
) -> MonteCarloKernels:
    """Means and standard errors of the empirical NNGP and NTK over random networks.

    Sample i (i = 0 … n_samples − 1) is the network ``model_fn(base_seed + i)`` (torch's
    generators seeded with base_seed + i first, then restored). Its NNGP sample is
    f(x1)ᵀf(x2)/n_L and its NTK sample ``empirical_ntk(model, x1, x2, mode="trace")``
    (the structured fused path when the model lifts, torch.func otherwise); both are
    means over the n_L outputs, so they estimate the [N1, N2] kernels that
    :func:`torch_ntk.analytic_kernels` returns (K ⊗ Id over outputs).

    Args:
        model_fn: ``model_fn(seed) -> nn.Module``, a freshly initialized network mapping
            [N, ...] to [N, n_L] (or [N]). It may use torch's global generator (seeded
            for it) or the seed it is given; seed other generators (numpy, random) from
            that seed. The model is moved to x1's device and dtype; Dropout must be off.
        x1: [N1, ...] float32/float64 inputs.
        x2: [N2, ...] like x1, or None (or x1) for x2 = x1: every mean is then exactly
            symmetric.
        n_samples: P ≥ 1, the number of networks.
        get: "nngp", "ntk" or both.
        base_seed: seed of sample 0; sample i uses base_seed + i.
        nngp_estimator: "outputs" — f(x1)ᵀf(x2)/n_L (any model); "readout" — the same
            with the last dense layer integrated out exactly,
            σ_w²/n ⟨α(x1), α(x2)⟩ + σ_b² with α the last layer's input (the Gram of
            :func:`random_features`): the same mean with a variance that shrinks with
            the width instead of n_L. Needs an ``nn.Sequential`` ending in NTKLinear or
            nn.Linear whose initialization is the one :func:`torch_ntk.lift` assumes.
        method, chunk_size, memory_budget: passed to :func:`torch_ntk.empirical_ntk`
            (``chunk_size`` also chunks the forward passes).
        progress: None shows a tqdm bar over samples once a run takes over two seconds;
            True always; False never.

    Returns:
        :class:`MonteCarloKernels` (float64 means and standard errors, [N1, N2]).

    Raises:
        TypeError: model_fn not callable or not returning an nn.Module, non-tensor or
            non-floating inputs, n_samples or base_seed not an integer, a model output
            that is not a tensor.
        ValueError: n_samples < 1, an unknown ``get``/``nngp_estimator``/``method``, x2
            with other per-sample features (or dtype, device) than x1, inputs the model
            cannot take, empty batches, NaN/Inf in inputs or outputs, active Dropout,
            a model the "readout" estimator cannot read.

    Cost: P × (one model construction + two forward passes + one empirical_ntk).
    """
    name = "monte_carlo_kernels"
    if n_samples is None:
        raise TypeError(f"{name}: n_samples (the number of networks) is required")
    n_samples = check_int(name, "n_samples", n_samples, minimum=1)
    runs = _checked_estimates(name, model_fn, x1, x2, n_samples, get, None, n_samples,
                              base_seed, nngp_estimator, method, chunk_size, memory_budget,
                              progress)
    return collections.deque(runs, maxlen=1)[0]


def iter_monte_carlo_kernels(
    model_fn: ModelFn,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    n_samples: Optional[int] = None,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    *,
    checkpoints: Optional[Sequence[int]] = None,
    every: int = 1,
    base_seed: int = 0,
    nngp_estimator: str = "outputs",
    method: str = "auto",
    chunk_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    progress: Optional[bool] = None,
) -> Iterator[MonteCarloKernels]:
    """Running estimates of :func:`monte_carlo_kernels` for increasing sample counts.

    Yields a :class:`MonteCarloKernels` (fresh tensors) after each count in
    ``checkpoints``, or after every ``every`` samples when no checkpoints are given,
    and always after the last sample. The estimate after P samples is exactly what
    ``monte_carlo_kernels(..., n_samples=P)`` returns. With n_samples=None and no
    checkpoints the generator runs until the caller stops, e.g. ::

        for est in iter_monte_carlo_kernels(make, x, get="ntk", every=8):
            if est.n_samples >= 16 and est.ntk_stderr.max() < 1e-3:
                break

    Args:
        checkpoints: strictly increasing sample counts ≥ 1; n_samples defaults to the
            last one and must not be smaller.
        every: yield period (in samples) when checkpoints is None.
        The others: as in :func:`monte_carlo_kernels`.

    Arguments are checked when this function is called, before the first sample.
    Between yields nothing is held but the running moments, and the caller's random
    generators are in their own state (each sample forks and restores them).
    """
    return _checked_estimates("iter_monte_carlo_kernels", model_fn, x1, x2, n_samples, get,
                              checkpoints, every, base_seed, nngp_estimator, method, chunk_size,
                              memory_budget, progress)


def _checked_estimates(name, model_fn, x1, x2, n_samples, get, checkpoints, every, base_seed,
                       nngp_estimator, method, chunk_size, memory_budget, progress):
    """Check every argument now; return the (lazy) generator of estimates."""
    if n_samples is not None:
        n_samples = check_int(name, "n_samples", n_samples, minimum=1)
    run = RunningEstimate.create(name, model_fn, x1, x2, get, nngp_estimator, method,
                                 chunk_size, memory_budget)
    base_seed = check_int(name, "base_seed", base_seed, minimum=None)
    every = check_int(name, "every", every, minimum=1)
    if checkpoints is not None:
        checkpoints = check_increasing_ints(name, "checkpoints", checkpoints)
        if n_samples is None:
            n_samples = checkpoints[-1]
        elif n_samples < checkpoints[-1]:
            raise ValueError(
                f"{name}: n_samples ({n_samples}) is smaller than the last checkpoint "
                f"({checkpoints[-1]})"
            )
    return _running_estimates(run, n_samples, checkpoints, every, base_seed, progress)


def _running_estimates(run: RunningEstimate, n_samples: Optional[int],
                       checkpoints: Optional[list[int]], every: int, base_seed: int,
                       progress: Optional[bool]) -> Iterator[MonteCarloKernels]:
    """Fold networks base_seed, base_seed + 1, … into ``run``, yielding its estimate when due."""
    marks = set(checkpoints) if checkpoints is not None else None
    bar = progress_bar(n_samples, progress=progress, desc=run.name, unit="network")
    try:
        i = 0
        while n_samples is None or i < n_samples:
            run.add(base_seed + i)
            i += 1
            if bar is not None:
                bar.update(1)
            due = (i in marks) if marks is not None else (i % every == 0)
            if due or i == n_samples:
                yield run.estimate()
    finally:
        if bar is not None:
            bar.close()
