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
:class:`KernelDriftTracker`'s docstring (``help(KernelDriftTracker)``); with
``writer=SummaryWriter(...)`` each record also goes to TensorBoard under ``ntk/``, and
:class:`torch_ntk.integrations.lightning.KernelDriftCallback` drives a tracker from a
Lightning ``Trainer``.

Where training runs: a model wrapped in ``DistributedDataParallel``, ``torch.compile``
or :class:`torch_ntk.NTK` is looked through (the kernel is that of the module inside,
called directly, so a record makes no collective call); under ``torch.distributed``
only rank 0 records by default (the others count steps and keep an empty history).
Records are computed in the parameters' dtype with autocast disabled, whatever the
autocast state around ``optimizer.step()``.

The tracker never perturbs training: kernels are computed under
:func:`torch_ntk._utils.model_context.kernel_context` (eval mode, no autograd, every module's
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

from ..analytic.kernels import analytic_kernels
from ..lifting.lift import lift
from .records import DriftRecord, log_scalars, measure, plot_history, write_csv
from ..empirical.ntk import compute_empirical_ntk
from .._utils.model_context import kernel_context, unwrap
from .inputs import (autocast_off, check_probe, check_reference, check_targets, norm,
                              process_rank, projection_matrix)

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
        label_alignment  ⟨Θ_t, Y Yᵀ⟩ / (‖Θ_t‖ ‖Y Yᵀ‖)            (Y = probe_y as [N, c]:
                         integer labels one-hot, floats as given; for c = 1 this is
                         yᵀΘy / (‖Θ‖ ‖y‖²); None without targets)
        trace            tr Θ_t
        eigenvalues      the top_k eigenvalues of Θ_t, largest first
        condition_number λ_max / λ_min of Θ_t (inf when λ_min ≤ 0 in floating point)
        param_movement   ‖θ_t − θ_0‖ / ‖θ_0‖ over the trainable parameters

    Metrics are computed in float64 from the kernel, on its device, with one copy to
    the host per record. The kernel is computed in the parameters' dtype with autocast
    disabled (training under ``torch.autocast`` does not change a record).

    Args:
        model: the ``nn.Module`` being trained (an :class:`torch_ntk.NTK`,
            ``torch.compile``, ``DataParallel`` or ``DistributedDataParallel`` wrapper is
            looked through: the kernel is that of the module inside, so a record makes
            no collective call). Dropout and batch norm are fine: kernels are computed
            in eval mode.
        probe_x: [N, ...] the probe inputs (N ≥ 2), converted to the dtype and device of
            the model's parameters.
        probe_y: optional targets for ``label_alignment``: [N] or [N, 1] integer class
            labels, one-hot encoded (max label + 1 columns; the value does not depend on
            the column count, so labels and their one-hot float matrix agree), or floats
            taken as given, [N] as one column (so ``y.float()`` of 0/1 labels is one
            regression target, not two classes: another value than ``y.long()``).
            ``torch_ntk.tracking.label_alignment`` computes it for any kernel.
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
        spectrum_every: compute eigenvalues and condition_number at every k-th record
            only (1, the default: at each); the records between hold ``()`` and None.
            The O(N³) eigendecomposition is most of a record's metric cost.
        writer: a ``torch.utils.tensorboard.SummaryWriter``, or anything with
            ``add_scalar(tag, value, global_step=...)``: each record's scalars go to it
            as ``ntk/drift``, ``ntk/alignment_distance`` (= kernel_distance),
            ``ntk/velocity``, ``ntk/param_movement``, ``ntk/trace``,
            ``ntk/condition_number``, ``ntk/label_alignment``, ``ntk/limit_distance``,
            ``ntk/eigenvalue_i`` (those not None) at the optimizer step as global step.
            Flushing and closing it are the caller's.
        rank_zero_only: under an initialized ``torch.distributed`` process group (or
            with the ``RANK`` variable torchrun sets), record on rank 0 only; the other
            ranks count steps, compute nothing and keep an empty history
            (``active`` is False there). False: every rank records.

    Cost of a record: one trace-mode empirical NTK on the probe set plus an O(N³)
    symmetric eigendecomposition, so probe sets of hundreds to a few thousand points
    are the intended use (``torch-ntk bench tracker`` measures it against a training step).

    The constructor computes Θ_0 and stores the step-0 record, so build the tracker
    before training starts (or restore one with :meth:`load_state_dict`).

    Attributes:
        model: the tracked (unwrapped) module. probe_x, probe_y: the probe set as used
        ([N, ...] in the parameters' dtype; targets as [N, c] float64).
        every, top_k, method, memory_budget, spectrum_every, writer: as given.
        limit_unavailable: why ``limit_distance`` is None ("" when it is computed).
        rank: this process's rank (0 without torch.distributed); active: whether this
        process records.

    Raises:
        TypeError: model, probe or writer of the wrong type.
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
        spectrum_every: int = 1,
        writer: Any = None,
        rank_zero_only: bool = True,
    ) -> None:
        self.model = unwrap(model)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"KernelDriftTracker: every must be a positive integer; got {every!r}")
        for name, value in (("top_k", top_k), ("spectrum_every", spectrum_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KernelDriftTracker: {name} must be a positive integer; got {value!r}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(
                "KernelDriftTracker: writer must have an add_scalar(tag, value, global_step) "
                f"method, like torch.utils.tensorboard.SummaryWriter; got {type(writer).__name__}"
            )
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
        self.spectrum_every = spectrum_every
        self.writer = writer
        self.rank = process_rank()
        self.active = self.rank == 0 or not rank_zero_only
        self._projection: Optional[Tensor] = None  # Q, made at the first kernel

        trainable = self._trainable()
        first = next(iter(trainable.values()))
        self.probe_x = check_probe(probe_x, first)
        n = self.probe_x.shape[0]
        self.probe_y = None if probe_y is None else check_targets(probe_y, n, self.probe_x.device)

        self._handle: Optional[torch.utils.hooks.RemovableHandle] = None
        self._step = 0
        self._history: list[DriftRecord] = []
        self._last: Optional[tuple[Tensor, int]] = None
        self._theta0: dict[str, Tensor] = {}
        self._reference: Optional[Tensor] = None
        self._limit, self.limit_unavailable = None, "this rank does not record"
        if self.active:
            with autocast_off(first.device):
                self._start(trainable, reference, infinite_width)

    def _start(self, trainable: dict[str, Tensor], reference: Union[str, Tensor],
               infinite_width: Optional[bool]) -> None:
        """θ_0, Θ∞, Θ_ref and the step-0 record (on the recording rank)."""
        self._theta0 = {name: p.detach().clone() for name, p in trainable.items()}
        self._theta0_norm = norm(self._theta0.values())

        kind = "tensor" if isinstance(reference, Tensor) else reference
        self.limit_unavailable = "infinite_width=False"
        if infinite_width is not False or kind == "limit":
            self._limit, self.limit_unavailable = self._limit_kernel()
            if self._limit is None and (infinite_width or kind == "limit"):
                raise ValueError(
                    f"KernelDriftTracker: the infinite-width kernel is not available: "
                    f"{self.limit_unavailable}"
                )

        kernel = self._kernel()
        if kind == "tensor":
            self._reference = check_reference(reference, kernel)
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
    def reference(self) -> Optional[Tensor]:
        """Θ_ref [N, N], the kernel drift is measured against (None where not active)."""
        return self._reference

    @property
    def limit_kernel(self) -> Optional[Tensor]:
        """Θ∞ [N, N] on the probe set, or None (see ``limit_unavailable``)."""
        return self._limit

    @property
    def last_kernel(self) -> Optional[Tensor]:
        """Θ_t [N, N] of the latest record (None on a rank that does not record)."""
        return None if self._last is None else self._last[0]

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

    def step(self, count: int = 1) -> Optional[DriftRecord]:
        """Count ``count`` optimizer steps (default one); record, and return the record,
        when the count reaches or passes a multiple of ``every`` (one record at most).

        Call it after ``optimizer.step()`` in hand-written loops (``attach`` does it for
        you); ``count`` > 1 catches up with a trainer's step counter.
        """
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"KernelDriftTracker.step: count must be an integer >= 0; got {count!r}")
        before = self._step
        self._step += count
        if self._step // self.every > before // self.every:
            return self.record()
        return None

    def record(self) -> Optional[DriftRecord]:
        """Compute the kernel now and append a record at the current step count
        (None on a rank that does not record)."""
        if not self.active:
            return None
        self._follow_device()
        with autocast_off(self.probe_x.device):
            return self._append(self._kernel())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the history after a restart.

        Keys: version, step, reference (Θ_ref), theta0 ({name: θ_0}), last_kernel,
        last_step, limit_kernel (or None), probe_x, probe_y (or None), projection
        (Q, or None), history (a list of plain dicts). Tensors are the tracker's own (not
        copies); ``torch.save`` it with the model and optimizer state. On a rank that does
        not record: version, step and active=False only.
        """
        if not self.active:
            return {"version": _STATE_VERSION, "step": self._step, "active": False}
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
        if not self.active:
            self._step = int(state["step"])
            return
        if state.get("active", True) is False:
            raise ValueError(
                "KernelDriftTracker.load_state_dict: the state comes from a rank that did not "
                "record; load rank 0's state"
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
        self._theta0_norm = norm(self._theta0.values())
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
            f"attached={self.attached}{'' if self.active else ', active=False'})"
        )

    # -- internals --------------------------------------------------------------------

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self.step()

    def _trainable(self) -> dict[str, Tensor]:
        trainable = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("KernelDriftTracker: the model has no parameter with requires_grad=True")
        return trainable

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

    def _param_movement(self, device: torch.device) -> Union[Tensor, float]:
        """‖θ_t − θ_0‖ / ‖θ_0‖ as a 0-dim float64 tensor on ``device`` (no host sync)."""
        params = dict(self.model.named_parameters())
        missing = [name for name in self._theta0 if name not in params]
        if missing:
            raise ValueError(f"KernelDriftTracker: tracked parameters {missing} are gone from the model")
        if not self._theta0_norm > 0:
            return math.inf
        for name, p0 in self._theta0.items():
            if p0.device != params[name].device:
                self._theta0[name] = p0.to(params[name].device)
        # Multi-tensor kernels: a few launches for all parameters on a GPU, not four each.
        diffs = torch._foreach_sub([params[name].detach() for name in self._theta0],
                                   list(self._theta0.values()))
        norms = torch._foreach_norm(diffs, 2, dtype=torch.float64)
        return torch.stack([n.to(device) for n in norms]).square().sum().sqrt() / self._theta0_norm

    def _append(self, kernel: Tensor) -> DriftRecord:
        assert self._reference is not None
        spectrum = len(self._history) % self.spectrum_every == 0
        record = measure(self._step, kernel, self._reference, top_k=self.top_k,
                         param_movement=self._param_movement(kernel.device), last=self._last,
                         limit=self._limit, targets=self.probe_y, spectrum=spectrum)
        self._last = (kernel, self._step)
        self._history.append(record)
        if self.writer is not None:
            log_scalars(self.writer, record)
        return record
