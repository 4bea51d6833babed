"""Monte-Carlo kernels and the random-features view (NTK_MATH.md §5; Jacot et al. §3.1).

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
    NTK  sample: empirical_ntk(model, x1, x2, mode="trace") / n_L
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
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .analytic import KERNEL_NAMES, analytic_kernels
from .arch import Dense, LayerSpec, _dense_of, _flat_modules, mlp_spec
from .empirical import METHODS, _StructuredPlan, empirical_ntk
from .nn import NTKLinear

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

NNGP_ESTIMATORS = ("outputs", "readout")

ModelFn = Callable[[int], nn.Module]
SpecOrWidths = Union[LayerSpec, Sequence[int]]


class MonteCarloKernels(NamedTuple):
    """Means over random networks and their standard errors; fields not requested are None.

    nngp, ntk: [N1, N2] float64, the sample means of f(x1)ᵀf(x2)/n_L and of the trace
        NTK / n_L (see the module docstring), estimates of Σ^(L) and Θ∞^(L).
    nngp_stderr, ntk_stderr: [N1, N2] float64, the standard error of each mean entry,
        s/√P with s the sample standard deviation (divisor P − 1); NaN while P = 1.
    n_samples: P, the number of networks averaged.
    method: the path ``empirical_ntk`` took ("structured", "jacobian", "ntk_vp"; several
        joined by "," if the models differed); None when the NTK was not requested.
    """

    nngp: Optional[Tensor]
    ntk: Optional[Tensor]
    nngp_stderr: Optional[Tensor]
    ntk_stderr: Optional[Tensor]
    n_samples: int
    method: Optional[str]

    def merge(self, other: "MonteCarloKernels") -> "MonteCarloKernels":
        """The estimate from the samples of both runs together (Chan et al.'s update).

        The runs must use disjoint seeds, e.g. a second run with ``base_seed`` = the first
        run's base_seed + n_samples: the merge then equals one run over all the samples up
        to rounding, so a long estimate can be built in pieces (or in parallel jobs).
        Both must hold the same kernels for the same inputs.
        """
        if not isinstance(other, MonteCarloKernels):
            raise TypeError(
                f"MonteCarloKernels.merge: other must be a MonteCarloKernels; got "
                f"{type(other).__name__}"
            )
        fields = {}
        for kernel in KERNEL_NAMES:
            a, b = getattr(self, kernel), getattr(other, kernel)
            if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                raise ValueError(
                    f"MonteCarloKernels.merge: both estimates must hold {kernel} of the same "
                    f"shape; got {None if a is None else list(a.shape)} and "
                    f"{None if b is None else list(b.shape)}"
                )
            if a is None:
                fields[kernel] = fields[kernel + "_stderr"] = None
                continue
            moments = _Moments.of(a, getattr(self, kernel + "_stderr"), self.n_samples)
            moments.merge(_Moments.of(b, getattr(other, kernel + "_stderr"), other.n_samples))
            fields[kernel], fields[kernel + "_stderr"] = moments.mean, moments.stderr()
        methods = [m for est in (self, other) if est.method for m in est.method.split(",")]
        method = ",".join(dict.fromkeys(methods)) if self.ntk is not None else None
        return MonteCarloKernels(fields["nngp"], fields["ntk"], fields["nngp_stderr"],
                                 fields["ntk_stderr"], self.n_samples + other.n_samples, method)


class _Moments:
    """Running mean and sum of squared deviations in float64 (Welford 1962)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Optional[Tensor] = None
        self.m2: Optional[Tensor] = None

    def add(self, sample: Tensor) -> None:
        x = sample.to(torch.float64, copy=True)
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x, torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean.add_(delta, alpha=1.0 / self.n)
        self.m2.addcmul_(delta, x.sub_(self.mean))

    @classmethod
    def of(cls, mean: Tensor, stderr: Tensor, n: int) -> "_Moments":
        """Moments recovered from an estimate: M2 = stderr² · n (n − 1) (0 for n = 1)."""
        moments = cls()
        moments.n, moments.mean = n, mean.to(torch.float64, copy=True)
        if n < 2:
            moments.m2 = torch.zeros_like(moments.mean)
        else:
            moments.m2 = stderr.to(torch.float64).square() * (n * (n - 1))
        return moments

    def merge(self, other: "_Moments") -> None:
        """Fold in the moments of disjoint samples (Chan, Golub & LeVeque 1979)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean.add_(delta, alpha=other.n / n)
        self.m2.add_(other.m2).add_(delta.square_(), alpha=self.n * other.n / n)
        self.n = n

    def stderr(self) -> Tensor:
        if self.n < 2:
            return torch.full_like(self.mean, math.nan)
        return (self.m2 / ((self.n - 1) * self.n)).sqrt_()


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
    f(x1)ᵀf(x2)/n_L and its NTK sample ``empirical_ntk(model, x1, x2, mode="trace")/n_L``
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
    n_samples = _check_int(name, "n_samples", n_samples, minimum=1)
    runs = _start(name, model_fn, x1, x2, n_samples, get, None, n_samples, base_seed,
                  nngp_estimator, method, chunk_size, memory_budget, progress)
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
    return _start("iter_monte_carlo_kernels", model_fn, x1, x2, n_samples, get, checkpoints,
                  every, base_seed, nngp_estimator, method, chunk_size, memory_budget, progress)


def _start(name, model_fn, x1, x2, n_samples, get, checkpoints, every, base_seed,
           nngp_estimator, method, chunk_size, memory_budget, progress):
    """Check every argument now; return the (lazy) generator of estimates."""
    if n_samples is not None:
        n_samples = _check_int(name, "n_samples", n_samples, minimum=1)
    run = _Run.create(name, model_fn, x1, x2, get, nngp_estimator, method, chunk_size,
                      memory_budget)
    base_seed = _check_int(name, "base_seed", base_seed, minimum=None)
    every = _check_int(name, "every", every, minimum=1)
    if checkpoints is not None:
        checkpoints = _check_checkpoints(name, checkpoints)
        if n_samples is None:
            n_samples = checkpoints[-1]
        elif n_samples < checkpoints[-1]:
            raise ValueError(
                f"{name}: n_samples ({n_samples}) is smaller than the last checkpoint "
                f"({checkpoints[-1]})"
            )
    return _iterate(run, n_samples, checkpoints, every, base_seed, progress)


def _iterate(run: "_Run", n_samples: Optional[int], checkpoints: Optional[list[int]],
             every: int, base_seed: int, progress: Optional[bool]) -> Iterator[MonteCarloKernels]:
    marks = set(checkpoints) if checkpoints is not None else None
    bar = _progress_bar(n_samples, progress, run.name)
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


# ---------------------------------------------------------------------------------
# one run: validation, drawing models, folding samples into the moments


class _Run:
    def __init__(self, name, model_fn, x1, x2, wanted, nngp_estimator, method, chunk_size,
                 memory_budget):
        self.name, self.model_fn, self.x1, self.x2 = name, model_fn, x1, x2
        self.wanted, self.nngp_estimator, self.method = wanted, nngp_estimator, method
        self.chunk_size, self.memory_budget = chunk_size, memory_budget
        self.moments = {k: _Moments() for k in wanted}
        self.methods: list[str] = []

    @classmethod
    def create(cls, name, model_fn, x1, x2, get, nngp_estimator, method, chunk_size,
               memory_budget) -> "_Run":
        if not callable(model_fn):
            raise TypeError(
                f"{name}: model_fn must be a callable model_fn(seed) -> nn.Module; got "
                f"{type(model_fn).__name__}"
            )
        wanted = _check_get(name, get)
        if nngp_estimator not in NNGP_ESTIMATORS:
            raise ValueError(
                f"{name}: nngp_estimator must be one of {NNGP_ESTIMATORS}; got {nngp_estimator!r}"
            )
        if method not in METHODS:
            raise ValueError(f"{name}: method must be one of {METHODS}; got {method!r}")
        if chunk_size is not None:
            chunk_size = _check_int(name, "chunk_size", chunk_size, minimum=1)
        if x2 is x1:
            x2 = None
        x1 = _check_batch(name, "x1", x1)
        if x2 is not None:
            x2 = _check_batch(name, "x2", x2, like=x1)
        return cls(name, model_fn, x1, x2, wanted, nngp_estimator, method, chunk_size,
                   memory_budget)

    def add(self, seed: int) -> None:
        """Draw network ``seed`` and fold its kernels into the moments."""
        with _forked_rng():
            model = _draw(self.name, self.model_fn, seed, self.x1)
            n_out = None
            if "nngp" in self.wanted:
                nngp, n_out = self._nngp(model, seed)
                self.moments["nngp"].add(nngp)
            if "ntk" in self.wanted:
                self.moments["ntk"].add(self._ntk(model, seed, n_out))

    def _inputs(self):
        return [("x1", self.x1)] + ([("x2", self.x2)] if self.x2 is not None else [])

    def _nngp(self, model: nn.Module, seed: int) -> tuple[Tensor, Optional[int]]:
        """The NNGP sample [N1, N2] and n_L (None when the outputs were not computed)."""
        if self.nngp_estimator == "readout":
            phi = [_readout_features(self.name, model, arg, x, self.chunk_size, seed)
                   for arg, x in self._inputs()]
            n_out = None
        else:
            phi = [_outputs(self.name, model, arg, x, self.chunk_size, seed)
                   for arg, x in self._inputs()]
            n_out = phi[0].shape[1]
            if len(phi) == 2 and phi[1].shape[1] != n_out:
                raise ValueError(
                    f"{self.name}: the model of seed {seed} gives {n_out} outputs for x1 but "
                    f"{phi[1].shape[1]} for x2"
                )
            phi = [p / math.sqrt(n_out) for p in phi]
        if self.x2 is None:
            k = phi[0] @ phi[0].T
            return (k + k.T) / 2, n_out  # exactly symmetric
        return phi[0] @ phi[1].T, n_out

    def _ntk(self, model: nn.Module, seed: int, n_out: Optional[int]) -> Tensor:
        if n_out is None:
            n_out = _outputs(self.name, model, "x1", self.x1, self.chunk_size, seed).shape[1]
        try:
            theta, info = empirical_ntk(
                model, self.x1, self.x2, mode="trace", method=self.method,
                chunk_size=self.chunk_size, memory_budget=self.memory_budget, progress=False,
                return_info=True,
            )
        except ValueError as error:
            raise ValueError(f"{self.name}: the model of seed {seed}: {error}") from error
        if info.method not in self.methods:
            self.methods.append(info.method)
        return theta / n_out

    def estimate(self) -> MonteCarloKernels:
        def pick(kernel: str, stderr: bool) -> Optional[Tensor]:
            m = self.moments.get(kernel)
            if m is None:
                return None
            return m.stderr() if stderr else m.mean.clone()

        n = next(iter(self.moments.values())).n
        method = ",".join(self.methods) if "ntk" in self.wanted else None
        return MonteCarloKernels(pick("nngp", False), pick("ntk", False), pick("nngp", True),
                                 pick("ntk", True), n, method)


def _cuda_devices() -> list[int]:
    """The CUDA devices whose generators exist now (those a seed can reach and a fork restore)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def _forked_rng():
    """Fork torch's CPU generator and those of the initialized CUDA devices."""
    return torch.random.fork_rng(devices=_cuda_devices())


def _seed_all(seed: int) -> None:
    # torch.manual_seed would also queue a seed for a CUDA context created later, which
    # the fork could not undo; seed only the generators that exist.
    torch.default_generator.manual_seed(seed)
    for d in _cuda_devices():
        torch.cuda.default_generators[d].manual_seed(seed)


def _draw(name: str, model_fn: ModelFn, seed: int, like: Tensor) -> nn.Module:
    """model_fn(seed) with torch's generators seeded, on like's device and dtype."""
    _seed_all(seed)
    model = model_fn(seed)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{name}: model_fn must return an nn.Module; model_fn({seed}) returned "
            f"{type(model).__name__}"
        )
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"{name}: the model of seed {seed} has {module_name or 'itself'} "
                f"({type(module).__name__}, p={module.p}) in training mode, so the network is "
                "random given its parameters; return model.eval() from model_fn"
            )
    return model.to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def _outputs(name: str, model: nn.Module, arg: str, x: Tensor, chunk: Optional[int],
             seed: int) -> Tensor:
    """f(x) as [N, n_L] float64 (``arg`` names x in errors)."""
    parts = []
    step = chunk or x.shape[0]
    for start in range(0, x.shape[0], step):
        xs = x[start:start + step]
        try:
            y = model(xs)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{name}: {arg} of shape {list(x.shape)} does not fit the model of seed "
                f"{seed} ({error})"
            ) from error
        if not isinstance(y, Tensor):
            raise TypeError(
                f"{name}: the model of seed {seed} must return a tensor [N, n_L]; got "
                f"{type(y).__name__}"
            )
        if y.dim() == 0 or y.shape[0] != xs.shape[0]:
            raise ValueError(
                f"{name}: the model of seed {seed} must map [N, ...] to [N, n_L]; got output "
                f"shape {list(y.shape)} for input shape {list(xs.shape)}"
            )
        parts.append(y.reshape(xs.shape[0], -1).to(torch.float64))
    y = torch.cat(parts) if len(parts) > 1 else parts[0]
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name}: the model of seed {seed} returned NaN or Inf")
    return y


def _last_dense(name: str, model: nn.Module, seed: int) -> tuple[list[nn.Module], Dense]:
    """The modules before the last dense layer, and that layer's law (arch conventions)."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"{name}: nngp_estimator='readout' needs an nn.Sequential ending in a dense layer; "
            f"the model of seed {seed} is {type(model).__name__}. Use nngp_estimator='outputs'."
        )
    modules = [m for _, m in _flat_modules(model)]
    while modules and isinstance(modules[-1], (nn.Identity, nn.Dropout)):
        modules.pop()
    last = modules[-1] if modules else None
    if not isinstance(last, (NTKLinear, nn.Linear)) or (
        type(last).forward not in (NTKLinear.forward, nn.Linear.forward)
    ):
        raise ValueError(
            f"{name}: nngp_estimator='readout' needs the model to end in NTKLinear or "
            f"nn.Linear; the model of seed {seed} ends in {type(last).__name__}. Use "
            "nngp_estimator='outputs'."
        )
    return modules[:-1], _dense_of(len(modules) - 1, last, None, None)


@torch.no_grad()
def _readout_features(name: str, model: nn.Module, arg: str, x: Tensor,
                      chunk: Optional[int], seed: int) -> Tensor:
    """[σ_w α(x)/√n, σ_b] [N, n + 1] float64, α the input of the last dense layer."""
    body, dense = _last_dense(name, model, seed)
    parts = []
    step = chunk or x.shape[0]
    for start in range(0, x.shape[0], step):
        a = x[start:start + step]
        try:
            for module in body:
                a = module(a)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{name}: {arg} of shape {list(x.shape)} does not fit the model of seed "
                f"{seed} ({error})"
            ) from error
        parts.append(a.reshape(a.shape[0], -1).to(torch.float64))
    a = torch.cat(parts) if len(parts) > 1 else parts[0]
    if a.shape[1] != dense.in_features:
        raise ValueError(
            f"{name}: the last dense layer of the model of seed {seed} expects "
            f"{dense.in_features} features; the layers before it give {a.shape[1]}"
        )
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name}: the model of seed {seed} produced NaN or Inf")
    bias = torch.full((a.shape[0], 1), math.sqrt(dense.bias_var), dtype=a.dtype,
                      device=a.device)
    return torch.cat([a * math.sqrt(dense.weight_var / dense.in_features), bias], 1)


# ---------------------------------------------------------------------------------
# the random-features view of an MLP architecture


def random_network(
    spec_or_widths: SpecOrWidths,
    width: Optional[int] = None,
    seed: int = 0,
    *,
    activation="relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> nn.Sequential:
    """The MLP of an architecture at hidden width n, drawn from ``seed``.

    Args:
        spec_or_widths: a :class:`~torch_ntk.arch.LayerSpec` (its σ_w², σ_b²,
            activations and parametrization are kept) or widths [n_0, n_1, …, n_L]
            (built like :func:`torch_ntk.mlp_spec` with ``activation``, ``weight_std``,
            ``bias_std``, ``parametrization``).
        width: n, the width given to every hidden layer; None keeps the spec's widths.
        seed: torch's generators are seeded with it for the draw and restored after.
        dtype, device: of the parameters (default torch's).

    Returns:
        ``nn.Sequential`` of NTKLinear and activation modules; the same network as
        ``monte_carlo_kernels`` draws for seed ``seed`` with ``model_fn`` building the
        architecture in the same dtype.
    """
    spec = _spec_at_width("random_network", spec_or_widths, width, activation, weight_std,
                          bias_std, parametrization)
    seed = _check_int("random_network", "seed", seed, minimum=None)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.init()  # so the draw uses a generator that is seeded and restored
    with _forked_rng():
        _seed_all(seed)
        return _build(spec, dtype, device)


def random_features(
    spec_or_widths: SpecOrWidths,
    width: Optional[int],
    x: Tensor,
    seed: int = 0,
    kernel: str = "nngp",
    *,
    activation="relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
) -> Tensor:
    """Random features Φ(x) of the network of width n drawn from ``seed`` (Jacot §3.1).

    Their Gram Φ(x1) Φ(x2)ᵀ is that network's finite-width kernel; its mean over seeds
    tends to the infinite-width kernel as n → ∞ (exactly equal for one hidden layer),
    with fluctuations O(n^−½):

    - ``kernel="nngp"``: Φ(x) = [σ_w α(x)/√n, σ_b] [N, n + 1], α the last hidden
      layer's activations: ΦΦᵀ = E over the output layer of f_k(x1) f_k(x2), the NNGP
      given the hidden layers, i.e. n random functions σ_w α_j with the bias as one
      more (the "readout" estimator of :func:`monte_carlo_kernels`).
    - ``kernel="ntk"``: Φ(x) = ∂f(x)/∂θ / √n_L flattened over (output k, parameter p)
      [N, n_L·P]: ΦΦᵀ = Σ_k Θ_kk / n_L, the trace-mode empirical NTK over n_L (the
      linearized network's features). Built from the structured factors
      (√c_w δ ⊗ α and √c_b δ per dense layer); holds N·n_L·P numbers.

    Args:
        spec_or_widths, width, activation, weight_std, bias_std, parametrization: the
            architecture, as in :func:`random_network`.
        x: [N, n_0] float32/float64; the network is drawn in its dtype and on its device.
        seed: which network (the caller's generators are restored).
        kernel: "nngp" or "ntk".

    Returns:
        Φ(x) [N, P_features] in x's dtype.
    """
    name = "random_features"
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"{name}: kernel must be one of {KERNEL_NAMES}; got {kernel!r}")
    spec = _spec_at_width(name, spec_or_widths, width, activation, weight_std, bias_std,
                          parametrization)
    x = _check_batch(name, "x", x)
    if x.dim() != 2 or x.shape[1] != spec.input_features:
        raise ValueError(
            f"{name}: x must have shape [N, {spec.input_features}] (the architecture's n_0); "
            f"got {list(x.shape)}"
        )
    model = random_network(spec, None, seed, dtype=x.dtype, device=x.device)
    if kernel == "nngp":
        return _readout_features(name, model, "x", x, None, seed).to(x.dtype)
    plan = _StructuredPlan.of(model)
    acts, cots = plan.features(x)
    cw, cb = plan.coefficients()
    n, n_out = x.shape[0], plan.n_out
    blocks = []
    for a, d, c_w, c_b in zip(acts, cots, cw, cb):
        # d [N, n_L, m], a [N, n_in]: weight features δ_k ⊗ α, bias features δ_k
        weight = math.sqrt(c_w) * d.unsqueeze(-1) * a[:, None, None, :]  # [N, n_L, m, n_in]
        blocks.append(weight.reshape(n, n_out, -1))
        if c_b:
            blocks.append(math.sqrt(c_b) * d)
    return torch.cat(blocks, 2).reshape(n, -1) / math.sqrt(n_out)


def _spec_at_width(name: str, spec_or_widths: SpecOrWidths, width: Optional[int], activation,
                   weight_std: float, bias_std: float, parametrization: str) -> LayerSpec:
    if isinstance(spec_or_widths, LayerSpec):
        spec = spec_or_widths
    elif isinstance(spec_or_widths, Sequence) and not isinstance(spec_or_widths, str):
        widths = list(spec_or_widths)
        if len(widths) < 2 or not all(
            isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths
        ):
            raise ValueError(
                f"{name}: spec_or_widths must be a LayerSpec or widths [n_0, ..., n_L] of at "
                f"least two positive integers; got {spec_or_widths!r}"
            )
        spec = mlp_spec([int(w) for w in widths], activation, weight_std, bias_std,
                        parametrization)
    else:
        raise TypeError(
            f"{name}: spec_or_widths must be a torch_ntk.arch.LayerSpec or a list of widths; "
            f"got {type(spec_or_widths).__name__}"
        )
    if width is None:
        return spec
    width = _check_int(name, "width", width, minimum=1)
    dense = list(spec.dense_layers)
    if len(dense) < 2:
        raise ValueError(f"{name}: the architecture has no hidden layer, so width={width} "
                         "has nothing to set; pass width=None")
    layers = list(spec.layers)
    for k, d in enumerate(dense):
        changes = {}
        if k > 0:
            changes["in_features"] = width
        if k < len(dense) - 1:
            changes["out_features"] = width
        layers[2 * k] = dataclasses.replace(d, **changes)
    return LayerSpec(tuple(layers), spec.flatten_input)


def _build(spec: LayerSpec, dtype, device) -> nn.Sequential:
    """NTKLinear/activation modules for ``spec`` (parameters from torch's generator)."""
    modules: list[nn.Module] = [nn.Flatten()] if spec.flatten_input else []
    for k, layer in enumerate(spec.layers):
        if k % 2 == 0:
            modules.append(NTKLinear(
                layer.in_features, layer.out_features, bias=layer.has_bias,
                weight_std=math.sqrt(layer.weight_var), bias_std=math.sqrt(layer.bias_var),
                parametrization=layer.parametrization, dtype=dtype, device=device,
            ))
        else:
            modules.append(layer.module())
    return nn.Sequential(*modules)


# ---------------------------------------------------------------------------------
# convergence study: error against the analytic kernel vs width n and samples P


@dataclass(frozen=True)
class ConvergenceRecord:
    """One row of a :class:`ConvergenceStudy` (errors relative to ‖K∞‖_F).

    kernel: "nngp" or "ntk". width: n, the hidden width. n_samples: P, networks averaged.
    n_features: n·P, the random features behind the estimate (one network ≈ n).
    error: √(mean over repeats of ‖K̂_P − K∞‖²_F) / ‖K∞‖_F, K∞ from analytic_kernels.
    error_spread: standard deviation over repeats of the relative error.
    stderr: ‖s‖_F / (√P ‖K∞‖_F), the error the sampling variance alone predicts (s: the
        per-network standard deviation of each entry, pooled over all repeats' samples
        at this width); error ≫ stderr means the finite-width bias dominates.
    bias: ‖mean of all samples at this width − K∞‖_F / ‖K∞‖_F, the finite-width bias
        estimate (same in every row of a width), with noise floor ``bias_stderr``
        = ‖s‖_F / (√(repeats·P_max) ‖K∞‖_F).
    repeats: independent runs (disjoint seeds) behind the row.
    """

    kernel: str
    width: int
    n_samples: int
    n_features: int
    error: float
    error_spread: float
    stderr: float
    bias: float
    bias_stderr: float
    repeats: int


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit log(error) = slope·log(variable) + intercept.

    kernel: "nngp" or "ntk". along: "n_samples" (P varies, width fixed at ``at``) or
    "width" (n varies, P fixed at ``at``). points: how many (variable, error) pairs.
    expected: −0.5, the slope of a purely variance-limited error (P^−½ or n^−½);
    a finite-width bias flattens the P-slope, and steepens the n-slope towards −1.
    """

    kernel: str
    along: str
    at: int
    slope: float
    intercept: float
    points: int
    expected: float = -0.5


@dataclass(frozen=True)
class ConvergenceStudy:
    """Result of :func:`convergence_study`: the table and the fitted slopes."""

    records: tuple[ConvergenceRecord, ...]
    slopes: tuple[SlopeFit, ...]

    def rows(self) -> list[dict]:
        """The records as dicts (e.g. for ``pandas.DataFrame(study.rows())``)."""
        return [dataclasses.asdict(r) for r in self.records]

    def slope(self, kernel: str, along: str, at: int) -> float:
        """The fitted slope for ``kernel`` along "n_samples" (at a width) or "width" (at P)."""
        for fit in self.slopes:
            if (fit.kernel, fit.along, fit.at) == (kernel, along, at):
                return fit.slope
        raise KeyError(f"no slope for kernel={kernel!r}, along={along!r}, at={at!r}")


def convergence_study(
    spec_or_widths: SpecOrWidths,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    widths: Sequence[int] = (64, 256, 1024),
    sample_counts: Sequence[int] = (1, 2, 4, 8, 16, 32),
    repeats: int = 4,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    base_seed: int = 0,
    activation="relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
    method: str = "auto",
    progress: Optional[bool] = None,
) -> ConvergenceStudy:
    """How the random-feature estimate's error against the analytic kernel falls with the
    hidden width n and the number of networks P.

    For each width n and each repeat r, networks of the architecture at width n are
    drawn with seeds base_seed + r·P_max + i (i < P_max = max(sample_counts); the same
    seeds at every width) and the estimates K̂_P (running means of the random-feature
    Grams: the readout NNGP and the trace NTK / n_L, see :func:`random_features`) are
    compared with :func:`torch_ntk.analytic_kernels` at each P in ``sample_counts``.
    Expect error ≈ C/√(nP) + bias(n), bias = O(1/n) (0 for one hidden layer): slopes
    near −½ along P while the variance dominates and along n at small P.

    Args:
        spec_or_widths, activation, weight_std, bias_std, parametrization: the
            architecture (see :func:`random_network`); its hidden widths are replaced by
            each entry of ``widths``.
        x1: [N1, n_0], x2: [N2, n_0] or None — the inputs (float64 recommended).
        widths: hidden widths n (positive, increasing).
        sample_counts: P values (positive, increasing).
        repeats: independent runs per width (≥ 1; ≥ 2 for ``error_spread``).
        get: "nngp", "ntk" or both.
        base_seed: seed of the first network.
        method: ``empirical_ntk``'s method for the NTK samples.
        progress: as in :func:`monte_carlo_kernels` (one bar for the whole study).

    Returns:
        :class:`ConvergenceStudy`: ``records`` (one :class:`ConvergenceRecord` per
        kernel × width × P) and ``slopes`` (:class:`SlopeFit` along P per width when
        there are ≥ 2 sample counts, along n per P when there are ≥ 2 widths).

    Cost: len(widths) × repeats × P_max networks (one empirical NTK each).
    """
    name = "convergence_study"
    wanted = _check_get(name, get)
    widths = _check_checkpoints(name, widths, "widths")
    counts = _check_checkpoints(name, sample_counts, "sample_counts")
    repeats = _check_int(name, "repeats", repeats, minimum=1)
    base_seed = _check_int(name, "base_seed", base_seed, minimum=None)
    specs = {n: _spec_at_width(name, spec_or_widths, n, activation, weight_std, bias_std,
                               parametrization) for n in widths}
    x1 = _check_batch(name, "x1", x1)
    if x2 is x1:
        x2 = None
    if x2 is not None:
        x2 = _check_batch(name, "x2", x2, like=x1)
    p_max = counts[-1]
    bar = _progress_bar(len(widths) * repeats * p_max, progress, name)
    records, slopes = [], []
    try:
        for n in widths:
            spec = specs[n]
            target = analytic_kernels(spec, x1, x2, get=wanted)
            norms = {k: float(torch.linalg.norm(getattr(target, k).double())) for k in wanted}
            for k, norm in norms.items():
                if not norm > 0:
                    raise ValueError(
                        f"{name}: the analytic {k} kernel is zero on these inputs at width {n}, "
                        "so relative errors are undefined"
                    )
            errors = {(k, p): [] for k in wanted for p in counts}
            pooled = {k: _Moments() for k in wanted}  # over every sample at this width

            def make(seed: int, spec=spec) -> nn.Module:
                return _build(spec, x1.dtype, x1.device)

            for r in range(repeats):
                run = _Run.create(name, make, x1, x2, wanted, "readout", method, None, None)
                for i in range(p_max):
                    seed = base_seed + r * p_max + i
                    run.add(seed)
                    if bar is not None:
                        bar.update(1)
                    if i + 1 in counts:
                        est = run.estimate()
                        for k in wanted:
                            diff = getattr(est, k) - getattr(target, k).double()
                            errors[(k, i + 1)].append(float(torch.linalg.norm(diff)) / norms[k])
                for k in wanted:
                    pooled[k].merge(run.moments[k])
            for k in wanted:
                if pooled[k].n > 1:
                    sd = (pooled[k].m2 / (pooled[k].n - 1)).sqrt()
                    sd_norm = float(torch.linalg.norm(sd)) / norms[k]
                else:
                    sd_norm = math.nan
                bias = float(torch.linalg.norm(pooled[k].mean - getattr(target, k).double()))
                bias /= norms[k]
                for p in counts:
                    e = torch.tensor(errors[(k, p)], dtype=torch.float64)
                    records.append(ConvergenceRecord(
                        k, n, p, n * p, float(e.square().mean().sqrt()),
                        float(e.std()) if repeats > 1 else math.nan, sd_norm / math.sqrt(p),
                        bias, sd_norm / math.sqrt(repeats * p_max), repeats,
                    ))
    finally:
        if bar is not None:
            bar.close()

    for k in wanted:
        if len(counts) >= 2:
            for n in widths:
                rows = [r for r in records if r.kernel == k and r.width == n]
                slopes.append(_fit(k, "n_samples", n, [r.n_samples for r in rows],
                                   [r.error for r in rows]))
        if len(widths) >= 2:
            for p in counts:
                rows = [r for r in records if r.kernel == k and r.n_samples == p]
                slopes.append(_fit(k, "width", p, [r.width for r in rows],
                                   [r.error for r in rows]))
    return ConvergenceStudy(tuple(records), tuple(slopes))


def _fit(kernel: str, along: str, at: int, xs: Sequence[float], ys: Sequence[float]) -> SlopeFit:
    lx = torch.log(torch.tensor(xs, dtype=torch.float64))
    ly = torch.log(torch.tensor(ys, dtype=torch.float64))
    lxc = lx - lx.mean()
    slope = float((lxc * (ly - ly.mean())).sum() / lxc.square().sum())
    intercept = float(ly.mean() - slope * lx.mean())
    return SlopeFit(kernel, along, at, slope, intercept, len(xs))


# ---------------------------------------------------------------------------------
# argument checks


def _check_get(name: str, get: Union[str, Sequence[str]]) -> tuple[str, ...]:
    wanted = (get,) if isinstance(get, str) else tuple(get) if isinstance(get, Sequence) else None
    if not wanted or any(g not in KERNEL_NAMES for g in wanted):
        raise ValueError(f"{name}: get must name some of {KERNEL_NAMES}; got {get!r}")
    return tuple(k for k in KERNEL_NAMES if k in wanted)


def _check_int(name: str, arg: str, value, minimum: Optional[int]) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name}: {arg} must be an integer; got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: {arg} must be at least {minimum}; got {value}")
    return int(value)


def _check_checkpoints(name: str, values, arg: str = "checkpoints") -> list[int]:
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"{name}: {arg} must be a non-empty sequence of integers; got {values!r}")
    out = [_check_int(name, arg, v, minimum=1) for v in values]
    if any(b <= a for a, b in zip(out[:-1], out[1:])):
        raise ValueError(f"{name}: {arg} must be strictly increasing; got {list(values)!r}")
    return out


def _check_batch(name: str, arg: str, x: Tensor, like: Optional[Tensor] = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {arg} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name}: {arg} must be float32 or float64; got {x.dtype}. Convert it with .float() "
            "or .double()."
        )
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(
            f"{name}: {arg} must be a batch [N, ...] with N >= 1; got shape {list(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: {arg} contains NaN or Inf")
    if like is not None:
        if x.shape[1:] != like.shape[1:]:
            raise ValueError(
                f"{name}: {arg} must have the per-sample shape of x1 {list(like.shape[1:])}; "
                f"got shape {list(x.shape)}"
            )
        if x.dtype != like.dtype:
            raise ValueError(
                f"{name}: {arg} must have the dtype of x1 ({like.dtype}); got {x.dtype}"
            )
        if x.device != like.device:
            raise ValueError(
                f"{name}: {arg} must be on the device of x1 ({like.device}); got {x.device}"
            )
    return x


def _progress_bar(total: Optional[int], progress: Optional[bool], desc: str):
    if progress is False:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="network", delay=0.0 if progress else 2.0,
                leave=False)
