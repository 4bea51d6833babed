"""Running Monte-Carlo kernel estimates: network samples folded into float64 moments.

``RunningEstimate`` draws networks and folds their NNGP and NTK samples into
:class:`Moments`; ``MonteCarloKernels`` is the estimate they give.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..analytic.kernels import KERNEL_NAMES
from ..empirical.ntk import METHODS, empirical_ntk
from .random_features import apply_in_chunks, readout_features
from .._utils.runtime import forked_rng, seed_all
from .._utils.validation import check_batch, check_choices, check_int

__all__ = ["ModelFn", "MonteCarloKernels", "Moments", "NNGP_ESTIMATORS", "RunningEstimate",
           "draw_network"]

NNGP_ESTIMATORS = ("outputs", "readout")

ModelFn = Callable[[int], nn.Module]


class MonteCarloKernels(NamedTuple):
    """Means over random networks and their standard errors; fields not requested are None.

    nngp, ntk: [N1, N2] float64, the sample means of f(x1)ᵀf(x2)/n_L and of the trace
        NTK / n_L (see :mod:`torch_ntk.monte_carlo`), estimates of Σ^(L) and Θ∞^(L).
    nngp_stderr, ntk_stderr: [N1, N2] float64, the standard error of each mean entry,
        s/√P with s the sample standard deviation (divisor P − 1); NaN while P = 1.
    n_samples: P, the number of networks averaged.
    method: the path ``empirical_ntk`` took ("structured", "hooks", "jacobian", "ntk_vp"; several
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
            moments = Moments.of(a, getattr(self, kernel + "_stderr"), self.n_samples)
            moments.merge(Moments.of(b, getattr(other, kernel + "_stderr"), other.n_samples))
            fields[kernel], fields[kernel + "_stderr"] = moments.mean, moments.stderr()
        methods = [m for est in (self, other) if est.method for m in est.method.split(",")]
        method = ",".join(dict.fromkeys(methods)) if self.ntk is not None else None
        return MonteCarloKernels(fields["nngp"], fields["ntk"], fields["nngp_stderr"],
                                 fields["ntk_stderr"], self.n_samples + other.n_samples, method)


class Moments:
    """Running mean and sum of squared deviations (M2) of [N1, N2] samples in float64
    (Welford 1962)."""

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
    def of(cls, mean: Tensor, stderr: Tensor, n: int) -> "Moments":
        """Moments recovered from an estimate: M2 = stderr² · n (n − 1) (0 for n = 1)."""
        moments = cls()
        moments.n, moments.mean = n, mean.to(torch.float64, copy=True)
        if n < 2:
            moments.m2 = torch.zeros_like(moments.mean)
        else:
            moments.m2 = stderr.to(torch.float64).square() * (n * (n - 1))
        return moments

    def merge(self, other: "Moments") -> None:
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
# one run: validation, drawing models, folding samples into the moments


class RunningEstimate:
    """The running moments of one Monte-Carlo run over networks ``model_fn(seed)``.

    Build it with :meth:`create` (which checks every argument), fold in networks with
    :meth:`add` and read the estimate so far with :meth:`estimate`. ``moments`` maps
    each wanted kernel ("nngp", "ntk") to its :class:`Moments`.
    """

    def __init__(self, name, model_fn, x1, x2, wanted, nngp_estimator, method, chunk_size,
                 memory_budget):
        self.name, self.model_fn, self.x1, self.x2 = name, model_fn, x1, x2
        self.wanted, self.nngp_estimator, self.method = wanted, nngp_estimator, method
        self.chunk_size, self.memory_budget = chunk_size, memory_budget
        self.moments = {k: Moments() for k in wanted}
        self.methods: list[str] = []

    @classmethod
    def create(cls, name, model_fn, x1, x2, get, nngp_estimator, method, chunk_size,
               memory_budget) -> "RunningEstimate":
        if not callable(model_fn):
            raise TypeError(
                f"{name}: model_fn must be a callable model_fn(seed) -> nn.Module; got "
                f"{type(model_fn).__name__}"
            )
        wanted = check_choices(name, "get", get, KERNEL_NAMES)
        if nngp_estimator not in NNGP_ESTIMATORS:
            raise ValueError(
                f"{name}: nngp_estimator must be one of {NNGP_ESTIMATORS}; got {nngp_estimator!r}"
            )
        if method not in METHODS:
            raise ValueError(f"{name}: method must be one of {METHODS}; got {method!r}")
        if chunk_size is not None:
            chunk_size = check_int(name, "chunk_size", chunk_size, minimum=1)
        if x2 is x1:
            x2 = None
        x1 = check_batch(name, "x1", x1)
        if x2 is not None:
            x2 = check_batch(name, "x2", x2, like=x1)
        return cls(name, model_fn, x1, x2, wanted, nngp_estimator, method, chunk_size,
                   memory_budget)

    def add(self, seed: int) -> None:
        """Draw network ``seed`` and fold its kernels into the moments."""
        with forked_rng():
            model = draw_network(self.name, self.model_fn, seed, self.x1)
            if "nngp" in self.wanted:
                self.moments["nngp"].add(self._nngp(model, seed))
            if "ntk" in self.wanted:
                self.moments["ntk"].add(self._ntk(model, seed))

    def _inputs(self):
        return [("x1", self.x1)] + ([("x2", self.x2)] if self.x2 is not None else [])

    def _nngp(self, model: nn.Module, seed: int) -> Tensor:
        """The NNGP sample [N1, N2]: f(x1)ᵀf(x2)/n_L, or the readout features' Gram."""
        if self.nngp_estimator == "readout":
            phi = [readout_features(self.name, model, arg, x, self.chunk_size, seed)
                   for arg, x in self._inputs()]
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
            return (k + k.T) / 2  # exactly symmetric
        return phi[0] @ phi[1].T

    def _ntk(self, model: nn.Module, seed: int) -> Tensor:
        """The NTK sample [N1, N2]: the trace-mode empirical NTK, (1/n_L) Σ_k Θ_kk."""
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
        return theta

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


def draw_network(name: str, model_fn: ModelFn, seed: int, like: Tensor) -> nn.Module:
    """model_fn(seed) with torch's generators seeded, on like's device and dtype."""
    seed_all(seed)
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
    parts = apply_in_chunks(name, arg, seed, x, chunk, model)
    for y in parts:
        if not isinstance(y, Tensor):
            raise TypeError(
                f"{name}: the model of seed {seed} must return a tensor [N, n_L]; got "
                f"{type(y).__name__}"
            )
    if any(y.dim() == 0 for y in parts) or sum(len(y) for y in parts) != len(x):
        raise ValueError(
            f"{name}: the model of seed {seed} must map [N, ...] to [N, n_L]; got output "
            f"shape {list(parts[0].shape)} for input shape {list(x.shape)}"
        )
    y = torch.cat([y.reshape(y.shape[0], -1).to(torch.float64) for y in parts])
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name}: the model of seed {seed} returned NaN or Inf")
    return y
