"""Kernel drift tracking: how far a training network's NTK moves (Jacot et al. §3.1, §4, Thm 1).

In the infinite-width limit the NTK stays fixed during training (Jacot et al. 2018,
Thm 2) and training is kernel regression with Θ∞. A finite network's kernel moves; by
how much — and whether it moves towards the targets — is what
:class:`KernelDriftTracker` records while the model trains.

The kernel tracked is the **trace-mode** empirical NTK on a fixed probe set X (N points):

    Θ_t[i, j] = (1/n_L) Σ_k Θ_kk(x_i, x_j)  at the parameters θ_t after t optimizer
                                             steps,   [N, N]

the mean over the n_L outputs (:func:`torch_ntk.empirical_ntk` with mode="trace": the
structured path when the model lifts to an MLP or a CNN, torch.func otherwise). Its
infinite-width counterpart is Θ∞ itself (the full limit is Θ∞ ⊗ Id_{n_L}).

Computing it takes n_L cotangents per probe point. With ``projections=p < n_L`` the
tracker records instead the trace NTK of the projected outputs Qᵀf(x), Q [n_L, p] a
fixed random matrix with orthonormal columns (Haar, seeded):

    Θ^Q_t[i, j] = (1/p) · tr(Qᵀ Θ(x_i, x_j) Q),   E_Q[Θ^Q_t] = Θ_t  (E[QQᵀ] = (p/n_L)·Id),

which costs p cotangents. Q is drawn once, so the drift of Θ^Q is the drift of one
fixed kernel; its infinite-width counterpart is still exactly Θ∞, and p = n_L gives
Θ_t itself.

Each record (:class:`DriftRecord`) holds the metrics defined in
:class:`KernelDriftTracker`'s docstring (``help(KernelDriftTracker)``).

The tracker never perturbs training: kernels are computed under
:func:`torch_ntk.evaluation.kernel_context` (eval mode, no autograd, every module's
train/eval flag and the CPU/CUDA random generators restored), no ``.grad`` is read or
written, and the only copies it keeps are Θ_ref, θ_0, the last kernel and (when the
model lifts) Θ∞ — three N×N matrices and one copy of the trainable parameters.

Example::

    >>> model = ntk_mlp([10, 512, 512, 1], "relu")
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
    >>> tracker = KernelDriftTracker(model, x_probe, y_probe, every=10)
    >>> handle = tracker.attach(opt)            # records after every 10th opt.step()
    >>> for x, y in loader:
    ...     opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    >>> tracker.history[-1].drift, tracker.to_csv("drift.csv"), tracker.plot("drift.png")
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .analytic import analytic_kernels
from .arch import lift
from .drift_records import DriftRecord, measure, plot_history, write_csv
from .empirical import compute_empirical_ntk
from .evaluation import kernel_context, unwrap
from .validation import check_batch

__all__ = ["DriftRecord", "KernelDriftTracker", "projection_matrix"]

# 2: trace kernels are means over the outputs (torch_ntk 0.2); version-1 states hold sums.
_STATE_VERSION = 2
_REFERENCES = ("init", "limit")


class KernelDriftTracker:
    """Record the empirical NTK of ``model`` on a fixed probe set while it trains.

    The kernel Θ_t [N, N] is the trace-mode NTK on the probe set after t optimizer
    steps, (1/n_L) Σ_k Θ_kk, on the scale of Θ∞ (the module docstring has the
    projected variant). Each record (:class:`DriftRecord`) holds, with Θ_ref the
    reference kernel (Θ_0 by default), ‖·‖ the Frobenius norm and ⟨A, B⟩ = Σ_ij A_ij B_ij:

        drift            ‖Θ_t − Θ_ref‖ / ‖Θ_ref‖
        kernel_distance  1 − ⟨Θ_t, Θ_ref⟩ / (‖Θ_t‖ ‖Θ_ref‖)      (0 = same direction)
        velocity         ‖Θ_t − Θ_prev‖ / ‖Θ_ref‖ / (t − t_prev)  (per optimizer step since
                         the previous record; None for the first record, or when no step
                         was taken since the previous one)
        limit_distance   ‖Θ_t − Θ∞‖ / ‖Θ∞‖                     (None when the model does
                         not lift to an MLP)
        label_alignment  ⟨Θ_t, Y Yᵀ⟩ / (‖Θ_t‖ ‖Y Yᵀ‖)            (Y = probe_y as [N, c];
                         for c = 1 this is yᵀΘy / (‖Θ‖ ‖y‖²); None without targets)
        trace            tr Θ_t
        eigenvalues      the top_k eigenvalues of Θ_t, largest first
        condition_number λ_max / λ_min of Θ_t (inf when λ_min ≤ 0 in floating point)
        param_movement   ‖θ_t − θ_0‖ / ‖θ_0‖ over the trainable parameters

    Metrics are computed in float64 from the kernel.

    Args:
        model: the ``nn.Module`` being trained (an :class:`torch_ntk.NTK`,
            ``torch.compile`` or ``DataParallel`` wrapper is looked through). Dropout
            and batch norm are fine: kernels are computed in eval mode.
        probe_x: [N, ...] the probe inputs (N ≥ 2), converted to the dtype and device of
            the model's parameters.
        probe_y: optional targets for ``label_alignment``: [N] or [N, c] floats, or [N]
            integer class labels (one-hot encoded).
        every: record after every ``every``-th optimizer step (step() counts them).
        reference: the kernel drift is measured against: "init" — Θ_0, the kernel
            when the tracker is built; "limit" — Θ∞ (the model must lift); or an
            [N, N] tensor (e.g. a kernel saved from another run).
        top_k: number of leading eigenvalues kept per record.
        infinite_width: compute Θ∞ for ``limit_distance``: None (default) — when
            the model lifts; True — required (ValueError naming the obstacle
            otherwise); False — never.
        method, memory_budget: passed to :func:`torch_ntk.empirical_ntk`.
        projections: None (default) — the exact trace NTK; p ≥ 1 — the unbiased
            projected kernel of the module docstring, p cotangents per probe instead of
            n_L (p ≥ n_L is exact). For models with many outputs.
        projection_seed: seed of the projection Q (a generator of its own; the global
            random state is untouched).

    Cost of a record: one trace-mode empirical NTK on the probe set plus an O(N³)
    symmetric eigendecomposition, so probe sets of hundreds to a few thousand points
    are the intended use (``torch-ntk bench tracker`` measures it against a training step).

    The constructor computes Θ_0 and stores the step-0 record, so build the tracker
    before training starts (or restore one with :meth:`load_state_dict`).

    Attributes:
        model: the tracked (unwrapped) module. probe_x, probe_y: the probe set as used
        ([N, ...] in the parameters' dtype; targets as [N, c] float64).
        every, top_k, method, memory_budget: as given.
        limit_unavailable: why ``limit_distance`` is None ("" when it is computed).

    Raises:
        TypeError: model or probe of the wrong type.
        ValueError: bad every/top_k/reference/probe_y, fewer than two probe points,
            no trainable parameter, a zero reference kernel, or reference="limit" /
            infinite_width=True for a model that does not lift.
    """

    def __init__(
        self,
        model: nn.Module,
        probe_x: Tensor,
        probe_y: Optional[Tensor] = None,
        every: int = 10,
        reference: Union[str, Tensor] = "init",
        *,
        top_k: int = 5,
        infinite_width: Optional[bool] = None,
        method: str = "auto",
        memory_budget: Optional[int] = None,
        projections: Optional[int] = None,
        projection_seed: int = 0,
    ) -> None:
        self.model = unwrap(model)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"KernelDriftTracker: every must be a positive integer; got {every!r}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"KernelDriftTracker: top_k must be a positive integer; got {top_k!r}")
        if not (isinstance(reference, Tensor) or reference in _REFERENCES):
            raise ValueError(
                f"KernelDriftTracker: reference must be one of {_REFERENCES} or an [N, N] "
                f"tensor; got {reference!r}"
            )
        if projections is not None and (not isinstance(projections, int)
                                        or isinstance(projections, bool) or projections < 1):
            raise ValueError(
                f"KernelDriftTracker: projections must be None or a positive integer; got "
                f"{projections!r}"
            )
        self.every = every
        self.top_k = top_k
        self.method = method
        self.memory_budget = memory_budget
        self.projections = projections
        self.projection_seed = projection_seed
        self._projection: Optional[Tensor] = None  # Q, made at the first kernel

        trainable = self._trainable()
        first = next(iter(trainable.values()))
        self.probe_x = self._check_probe(probe_x, first)
        n = self.probe_x.shape[0]
        self.probe_y = None if probe_y is None else self._check_targets(probe_y, n)

        self._theta0 = {name: p.detach().clone() for name, p in trainable.items()}
        self._theta0_norm = _norm(self._theta0.values())
        self._handle: Optional[torch.utils.hooks.RemovableHandle] = None
        self._step = 0
        self._history: list[DriftRecord] = []
        self._last: Optional[tuple[Tensor, int]] = None

        kind = "tensor" if isinstance(reference, Tensor) else reference
        self._limit, self.limit_unavailable = None, "infinite_width=False"
        if infinite_width is not False or kind == "limit":
            self._limit, self.limit_unavailable = self._limit_kernel()
            if self._limit is None and (infinite_width or kind == "limit"):
                raise ValueError(
                    f"KernelDriftTracker: the infinite-width kernel is not available: "
                    f"{self.limit_unavailable}"
                )

        kernel = self._kernel()
        if kind == "tensor":
            self._reference = self._check_reference(reference, kernel)
        elif kind == "limit":
            self._reference = self._limit
        else:
            self._reference = kernel
        if not float(torch.linalg.matrix_norm(self._reference.double())) > 0:
            raise ValueError("KernelDriftTracker: the reference kernel is zero; drift is undefined")
        self._append(kernel)

    # -- public API -------------------------------------------------------------------

    @property
    def history(self) -> list[DriftRecord]:
        """All records so far, oldest first (a new list of frozen records)."""
        return list(self._history)

    @property
    def steps(self) -> int:
        """Optimizer steps counted so far."""
        return self._step

    @property
    def reference(self) -> Tensor:
        """Θ_ref [N, N], the kernel drift is measured against."""
        return self._reference

    @property
    def limit_kernel(self) -> Optional[Tensor]:
        """Θ∞ [N, N] on the probe set, or None (see ``limit_unavailable``)."""
        return self._limit

    @property
    def last_kernel(self) -> Tensor:
        """Θ_t [N, N] of the latest record."""
        assert self._last is not None
        return self._last[0]

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.utils.hooks.RemovableHandle:
        """Call :meth:`step` after every ``optimizer.step()`` (a step post-hook).

        Returns the hook's handle; ``handle.remove()`` or :meth:`detach` unhooks it.
        One optimizer at a time: attach the one that updates the model once per
        training step.

        Raises:
            ValueError: already attached, or the optimizer updates none of the
                model's parameters.
        """
        if self.attached:
            raise ValueError("KernelDriftTracker: already attached to an optimizer; call detach() first")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"KernelDriftTracker.attach: expected a torch.optim.Optimizer; got {type(optimizer).__name__}"
            )
        ours = {id(p) for p in self.model.parameters()}
        if not any(id(p) in ours for g in optimizer.param_groups for p in g["params"]):
            raise ValueError(
                "KernelDriftTracker.attach: the optimizer updates none of the tracked model's "
                "parameters"
            )
        self._handle = optimizer.register_step_post_hook(self._after_optimizer_step)
        return self._handle

    def detach(self) -> None:
        """Remove the optimizer hook (nothing happens if none is attached)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def attached(self) -> bool:
        """Whether an optimizer hook is in place."""
        handle = self._handle
        if handle is None:
            return False
        hooks = handle.hooks_dict_ref()
        return hooks is not None and handle.id in hooks

    def step(self) -> Optional[DriftRecord]:
        """Count one optimizer step; record (and return the record) on every ``every``-th.

        Call it after ``optimizer.step()`` in hand-written loops (``attach`` does it for
        you).
        """
        self._step += 1
        if self._step % self.every == 0:
            return self.record()
        return None

    def record(self) -> DriftRecord:
        """Compute the kernel now and append a record at the current step count."""
        self._follow_device()
        return self._append(self._kernel())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the history after a restart.

        Keys: version, step, reference (Θ_ref), theta0 ({name: θ_0}), last_kernel,
        last_step, limit_kernel (or None), probe_x, probe_y (or None), projection
        (Q, or None), history (a list of plain dicts). Tensors are the tracker's own (not copies); ``torch.save`` it
        with the model and optimizer state.
        """
        kernel, step = self._last if self._last is not None else (None, None)
        return {
            "version": _STATE_VERSION,
            "step": self._step,
            "reference": self._reference,
            "theta0": dict(self._theta0),
            "last_kernel": kernel,
            "last_step": step,
            "limit_kernel": self._limit,
            "probe_x": self.probe_x,
            "probe_y": self.probe_y,
            "projection": self._projection,
            "history": [r.as_dict() for r in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run ``state`` came from: its step count, Θ_ref, θ_0, last kernel
        and history replace this tracker's (``every``, ``top_k`` and the method stay as
        constructed).

        Raises:
            ValueError: a different version, probe set or set of trainable parameters.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"KernelDriftTracker.load_state_dict: expected a state of version {_STATE_VERSION}; "
                f"got {state.get('version') if isinstance(state, dict) else type(state).__name__}"
                " (version 1 came from torch_ntk 0.1, whose trace kernels were sums over the "
                "outputs, not means: start a new tracker)"
            )
        device, dtype = self.probe_x.device, self.probe_x.dtype
        probe = state["probe_x"].to(device=device, dtype=dtype)
        if probe.shape != self.probe_x.shape or not torch.equal(probe, self.probe_x):
            raise ValueError(
                "KernelDriftTracker.load_state_dict: the state was recorded on a different probe "
                f"set (shape {list(state['probe_x'].shape)} vs {list(self.probe_x.shape)} or "
                "different values); build the tracker with the same probe_x"
            )
        trainable = self._trainable()
        theta0 = state["theta0"]
        if set(theta0) != set(trainable):
            raise ValueError(
                "KernelDriftTracker.load_state_dict: the state's parameters "
                f"{sorted(theta0)} differ from the model's trainable ones {sorted(trainable)}"
            )
        for name, p in trainable.items():
            if theta0[name].shape != p.shape:
                raise ValueError(
                    f"KernelDriftTracker.load_state_dict: parameter {name} has shape "
                    f"{list(theta0[name].shape)} in the state but {list(p.shape)} in the model"
                )
        n = self.probe_x.shape[0]

        def kernel(t: Optional[Tensor]) -> Optional[Tensor]:
            if t is None:
                return None
            if tuple(t.shape) != (n, n):
                raise ValueError(
                    f"KernelDriftTracker.load_state_dict: expected [{n}, {n}] kernels; got "
                    f"{list(t.shape)}"
                )
            return t.to(device=device, dtype=dtype)

        self._theta0 = {name: theta0[name].to(device=p.device, dtype=p.dtype)
                        for name, p in trainable.items()}
        self._theta0_norm = _norm(self._theta0.values())
        self._reference = kernel(state["reference"])
        if state.get("limit_kernel") is not None:
            self._limit = kernel(state["limit_kernel"])
        last = kernel(state.get("last_kernel"))
        self._last = None if last is None else (last, int(state["last_step"]))
        self._step = int(state["step"])
        self._history = [DriftRecord.from_dict(d) for d in state["history"]]
        if self.projections is not None and state.get("projection") is not None:
            self._projection = state["projection"].to(torch.float64)

    def to_csv(self, path: Union[str, os.PathLike]) -> None:
        """Write the history as CSV, atomically (a temporary file, then os.replace).

        Columns: step, drift, kernel_distance, velocity, limit_distance,
        label_alignment, trace, condition_number, param_movement, eig_1 … eig_k
        (largest first). Missing values are empty cells; floats round-trip exactly.
        """
        write_csv(self._history, path)

    def plot(self, path: Union[str, os.PathLike, None] = None):
        """Draw drift and spectrum over training; save to ``path`` if given.

        Three panels against the optimizer step: (1) drift, kernel distance, parameter
        movement and distance to Θ∞; (2) the top-k eigenvalues; (3) condition
        number and, with targets, label alignment. Log scales (zeros are not drawn).

        Returns:
            the ``matplotlib.figure.Figure`` (made without pyplot, so no GUI backend
            is touched). The file is written atomically, its format taken from the
            suffix (default png).

        Raises:
            ImportError: matplotlib is not installed.
        """
        return plot_history(self._history, path)

    def __repr__(self) -> str:
        return (
            f"KernelDriftTracker(model={type(self.model).__name__}, probe={list(self.probe_x.shape)}, "
            f"every={self.every}, steps={self._step}, records={len(self._history)}, "
            f"attached={self.attached})"
        )

    # -- internals --------------------------------------------------------------------

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self.step()

    def _trainable(self) -> dict[str, Tensor]:
        trainable = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("KernelDriftTracker: the model has no parameter with requires_grad=True")
        return trainable

    @staticmethod
    def _check_probe(probe_x: Tensor, like: Tensor) -> Tensor:
        probe_x = check_batch("KernelDriftTracker", "probe_x", probe_x)
        if probe_x.shape[0] < 2:
            raise ValueError(
                f"KernelDriftTracker: probe_x must hold at least two samples [N, ...]; got shape "
                f"{list(probe_x.shape)}"
            )
        return probe_x.detach().to(device=like.device, dtype=like.dtype)

    def _check_targets(self, probe_y: Tensor, n: int) -> Tensor:
        if not isinstance(probe_y, Tensor):
            raise TypeError(f"KernelDriftTracker: probe_y must be a torch.Tensor; got {type(probe_y).__name__}")
        if probe_y.shape[:1] != (n,) or probe_y.dim() > 2:
            raise ValueError(
                f"KernelDriftTracker: probe_y must have shape [{n}] or [{n}, c] like probe_x; got "
                f"{list(probe_y.shape)}"
            )
        y = probe_y.detach().to(self.probe_x.device)
        if not y.is_floating_point():
            if y.dim() != 1 or bool((y < 0).any()):
                raise ValueError("KernelDriftTracker: integer probe_y must be [N] class labels >= 0")
            y = torch.nn.functional.one_hot(y.long())
        y = y.to(torch.float64).reshape(n, -1)
        if not bool(torch.isfinite(y).all()) or not bool((y != 0).any()):
            raise ValueError("KernelDriftTracker: probe_y must be finite and not all zero")
        return y

    def _check_reference(self, reference: Tensor, kernel: Tensor) -> Tensor:
        n = kernel.shape[0]
        if tuple(reference.shape) != (n, n):
            raise ValueError(
                f"KernelDriftTracker: a reference kernel must have shape [{n}, {n}] (trace-mode "
                f"NTK on the probe set); got {list(reference.shape)}"
            )
        if not bool(torch.isfinite(reference).all()):
            raise ValueError("KernelDriftTracker: the reference kernel contains NaN or Inf")
        return reference.detach().to(device=kernel.device, dtype=kernel.dtype).clone()

    def _limit_kernel(self) -> tuple[Optional[Tensor], str]:
        """(Θ∞ on the probe set in the probe dtype, "") or (None, why not)."""
        try:
            spec = lift(self.model)
        except ValueError as error:
            return None, str(error)
        with torch.no_grad():
            ntk = analytic_kernels(spec, self.probe_x.double(), get="ntk").ntk
        return ntk.to(self.probe_x.dtype), ""

    def _kernel(self) -> Tensor:
        with kernel_context(self.model, self.probe_x):
            model = self._projected_model()
            kernel = compute_empirical_ntk(
                "KernelDriftTracker", model, self.probe_x, mode="trace", method=self.method,
                memory_budget=self.memory_budget, progress=False)
        return kernel.detach()

    def _projected_model(self) -> nn.Module:
        """The model itself, or model → the frozen linear map f ↦ Qᵀf."""
        if self.projections is None:
            return self.model
        p0 = next(iter(self._trainable().values()))
        if self._projection is None:
            with torch.no_grad():
                out = self.model(self.probe_x[:1])
            n_out = out.reshape(1, -1).shape[1]
            if self.projections >= n_out:  # exact: no projection needed
                self._projection = torch.empty(0)
            else:
                self._projection = projection_matrix(n_out, self.projections,
                                                     self.projection_seed)
        if self._projection.numel() == 0:
            return self.model
        proj = torch.nn.utils.skip_init(nn.Linear, *self._projection.shape, bias=False,
                                        device=p0.device, dtype=p0.dtype)  # no RNG draw
        with torch.no_grad():
            proj.weight.copy_(self._projection.t())
        proj.weight.requires_grad_(False)
        return nn.Sequential(self.model, proj)

    def _follow_device(self) -> None:
        """Move the stored tensors if the model moved (model.to(...) during training)."""
        p = next(iter(self._trainable().values()))
        if p.device == self.probe_x.device and p.dtype == self.probe_x.dtype:
            return
        move = lambda t: None if t is None else t.to(device=p.device, dtype=p.dtype)  # noqa: E731
        self.probe_x = move(self.probe_x)
        if self.probe_y is not None:
            self.probe_y = self.probe_y.to(p.device)
        self._reference, self._limit = move(self._reference), move(self._limit)
        if self._last is not None:
            self._last = (move(self._last[0]), self._last[1])

    def _param_movement(self) -> float:
        params = dict(self.model.named_parameters())
        missing = [name for name in self._theta0 if name not in params]
        if missing:
            raise ValueError(f"KernelDriftTracker: tracked parameters {missing} are gone from the model")
        for name, p0 in self._theta0.items():
            if p0.device != params[name].device:
                self._theta0[name] = p0.to(params[name].device)
        moved = _norm(params[name].detach() - p0 for name, p0 in self._theta0.items())
        return moved / self._theta0_norm if self._theta0_norm > 0 else math.inf

    def _append(self, kernel: Tensor) -> DriftRecord:
        record = measure(self._step, kernel, self._reference, top_k=self.top_k,
                         param_movement=self._param_movement(), last=self._last,
                         limit=self._limit, targets=self.probe_y)
        self._last = (kernel, self._step)
        self._history.append(record)
        return record


def projection_matrix(n_out: int, p: int, seed: int = 0) -> Tensor:
    """Q [n_out, p] float64 with orthonormal columns, drawn from the Haar measure by a
    generator seeded with ``seed`` (the global random state is untouched).

    E[Q Qᵀ] = (p/n_out)·Id_{n_out}, so the trace NTK of the outputs Qᵀf, (1/p) tr(QᵀΘQ),
    is an unbiased estimate of the trace NTK of f, (1/n_out) tr Θ (equal when p = n_out).
    """
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n_out, p, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # the sign convention that makes Q Haar-distributed
    return q


def _norm(tensors) -> float:
    """√(Σ ‖t‖²) accumulated in float64, one host sync per device."""
    norms: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        norms.setdefault(t.device, []).append(torch.linalg.vector_norm(t, dtype=torch.float64))
    return math.sqrt(sum(float(torch.stack(v).square().sum()) for v in norms.values()))
