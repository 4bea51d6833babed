"""The records of a tracked kernel: one record's metrics, and a history as CSV or a plot.

The metrics (definitions in :mod:`torch_ntk.tracking`) are computed in float64 from the
kernel Θ_t [N, N] against the reference Θ_ref [N, N].
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .._utils.files import atomic_write

__all__ = ["CSV_COLUMNS", "DriftRecord", "SCALAR_TAGS", "label_alignment", "log_scalars",
           "measure", "plot_history", "scalars", "write_csv"]


@dataclass(frozen=True)
class DriftRecord:
    """One measurement of the kernel (definitions in :mod:`torch_ntk.tracking`).

    step: optimizer steps taken when it was recorded (0 = when the tracker was built).
    eigenvalues and condition_number are () and None at the records that skip the
    spectrum (``KernelDriftTracker(spectrum_every=k)`` computes it at every k-th record).
    """

    step: int
    drift: float
    kernel_distance: float
    velocity: Optional[float]
    limit_distance: Optional[float]
    label_alignment: Optional[float]
    trace: float
    eigenvalues: tuple[float, ...]
    condition_number: Optional[float]
    param_movement: float

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (eigenvalues as a list): what state_dict and to_csv store."""
        d = dataclasses.asdict(self)
        d["eigenvalues"] = list(self.eigenvalues)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DriftRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - set(d)
        if missing:
            raise ValueError(f"DriftRecord: the record lacks {sorted(missing)}")
        values = {k: d[k] for k in fields}
        values["eigenvalues"] = tuple(float(e) for e in values["eigenvalues"])
        return cls(**values)


CSV_COLUMNS = ("step", "drift", "kernel_distance", "velocity", "limit_distance",
               "label_alignment", "trace", "condition_number", "param_movement")


# Record field → logged scalar name (TensorBoard tag and logger key, after the prefix "ntk/").
# kernel_distance, 1 − cos(Θ_t, Θ_ref), is logged as alignment_distance.
SCALAR_TAGS = {"drift": "drift", "kernel_distance": "alignment_distance", "velocity": "velocity",
               "param_movement": "param_movement", "trace": "trace",
               "condition_number": "condition_number", "label_alignment": "label_alignment",
               "limit_distance": "limit_distance"}


def scalars(record: DriftRecord, prefix: str = "ntk/") -> dict[str, float]:
    """The record's scalars as {prefix + name: value}: the names of :data:`SCALAR_TAGS`
    and eigenvalue_1 … eigenvalue_k (largest first); metrics that are None are left out."""
    out = {prefix + tag: getattr(record, field) for field, tag in SCALAR_TAGS.items()
           if getattr(record, field) is not None}
    out.update({f"{prefix}eigenvalue_{i + 1}": e for i, e in enumerate(record.eigenvalues)})
    return out


def log_scalars(writer: Any, record: DriftRecord) -> None:
    """``writer.add_scalar(tag, value, global_step=record.step)`` for each of
    :func:`scalars` (a ``torch.utils.tensorboard.SummaryWriter`` or anything alike)."""
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, global_step=record.step)


def label_alignment(kernel: Tensor, targets: Tensor) -> float:
    """Kernel-target alignment of Θ [N, N] with the targets Y:

        A(Θ, Y) = ⟨Θ, Y Yᵀ⟩_F / (‖Θ‖_F ‖Y Yᵀ‖_F),   ⟨A, B⟩_F = Σ_ij A_ij B_ij,

    in float64 (1 when Θ ∝ Y Yᵀ). ``targets`` is read as :class:`KernelDriftTracker`'s
    ``probe_y``: integer class labels [N] (or [N, 1]) are one-hot encoded with
    max label + 1 columns — the value does not depend on the number of columns, so labels
    and their one-hot float matrix agree; floating targets are taken as given, [N] as one
    column (for c = 1: yᵀΘy / (‖Θ‖_F ‖y‖²)).
    """
    from .inputs import check_targets  # records does not otherwise need the checks

    if not isinstance(kernel, Tensor) or kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"label_alignment: kernel must be a square [N, N] tensor; got "
                         f"{list(getattr(kernel, 'shape', [])) or type(kernel).__name__}")
    k = kernel.detach().double()
    y = check_targets(targets, k.shape[0], k.device)
    return float(_alignment(k, y, torch.linalg.matrix_norm(k)))


def _alignment(k: Tensor, y: Tensor, k_norm: Tensor) -> Tensor:
    """⟨Θ, Y Yᵀ⟩ / (‖Θ‖ ‖Y Yᵀ‖) for Θ = k [N, N], Y = y [N, c] float64, ‖Θ‖ = k_norm."""
    yty = y.t() @ y  # ‖YYᵀ‖_F = ‖YᵀY‖_F
    return (y * (k @ y)).sum() / (k_norm * torch.linalg.matrix_norm(yty))


def measure(step: int, kernel: Tensor, reference: Tensor, *, top_k: int,
            param_movement: Union[Tensor, float], last: Optional[tuple[Tensor, int]] = None,
            limit: Optional[Tensor] = None, targets: Optional[Tensor] = None,
            spectrum: bool = True) -> DriftRecord:
    """The record of kernel Θ_t [N, N] at ``step`` against ``reference`` Θ_ref [N, N].

    last: (Θ_prev, its step) for the velocity; limit: Θ∞ [N, N] for the limit
    distance; targets: Y [N, c] float64 for the label alignment (each None: that metric
    is None). param_movement: a 0-dim tensor (on any device) or a float. spectrum:
    compute the eigenvalues (O(N³), the costly part) or leave them out.

    Everything is computed on the kernel's device in float64 and copied to the host in
    one transfer (one synchronisation per record, plus eigvalsh's own on CUDA).
    """
    k = kernel.double()
    ref = reference.double()
    ref_norm = torch.linalg.matrix_norm(ref)
    k_norm = torch.linalg.matrix_norm(k)
    scalars = {
        "drift": torch.linalg.matrix_norm(k - ref) / ref_norm,
        # 1 − cos written as ½‖Θ_t/‖Θ_t‖ − Θ_ref/‖Θ_ref‖‖²: no cancellation for small
        # distances, exactly 0 for equal kernels.
        "kernel_distance": torch.linalg.matrix_norm(k / k_norm - ref / ref_norm).square() / 2,
        "trace": k.diagonal().sum(),
        "param_movement": torch.as_tensor(param_movement, dtype=torch.float64).to(k.device),
    }
    if last is not None and step > last[1]:
        prev, prev_step = last
        scalars["velocity"] = torch.linalg.matrix_norm(k - prev.double()) / ref_norm / (step - prev_step)
    if limit is not None:
        lim = limit.double()
        scalars["limit_distance"] = torch.linalg.matrix_norm(k - lim) / torch.linalg.matrix_norm(lim)
    if targets is not None:
        scalars["label_alignment"] = _alignment(k, targets, k_norm)
    top = k.new_empty(0)
    if spectrum:
        eig = torch.linalg.eigvalsh(k)  # ascending
        scalars["lambda_min"], scalars["lambda_max"] = eig[0], eig[-1]
        top = eig.flip(0)[:top_k]
    names = list(scalars)
    values = torch.cat([torch.stack([scalars[n].reshape(()) for n in names]), top]).cpu().tolist()
    v = dict(zip(names, values))
    condition = None
    if spectrum:
        condition = v["lambda_max"] / v["lambda_min"] if v["lambda_min"] > 0 else math.inf
    return DriftRecord(
        step=step,
        drift=v["drift"],
        kernel_distance=v["kernel_distance"],
        velocity=v.get("velocity"),
        limit_distance=v.get("limit_distance"),
        label_alignment=v.get("label_alignment"),
        trace=v["trace"],
        eigenvalues=tuple(values[len(names):]),
        condition_number=condition,
        param_movement=v["param_movement"],
    )


def write_csv(records: Sequence[DriftRecord], path: Union[str, os.PathLike]) -> None:
    """Write ``records`` as CSV, atomically: the :data:`CSV_COLUMNS`, then eig_1 … eig_k
    (largest first). Missing values are empty cells; floats round-trip exactly."""
    k = max((len(r.eigenvalues) for r in records), default=0)
    header = list(CSV_COLUMNS) + [f"eig_{i + 1}" for i in range(k)]

    def cell(v):
        return "" if v is None else repr(v)

    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        for r in records:
            eig = list(r.eigenvalues) + [None] * (k - len(r.eigenvalues))
            w.writerow([cell(getattr(r, c)) for c in CSV_COLUMNS] + [cell(e) for e in eig])

    atomic_write(path, write)


def plot_history(records: Sequence[DriftRecord], path: Union[str, os.PathLike, None] = None):
    """Three panels of ``records`` against the optimizer step (drift; top-k eigenvalues;
    condition number and label alignment), saved atomically to ``path`` if given (format
    from the suffix, default png). Returns the matplotlib Figure (no pyplot).

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "KernelDriftTracker.plot needs matplotlib, an optional dependency: "
            "pip install matplotlib (or torch-ntk[plot])"
        ) from error
    steps = [r.step for r in records]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_drift, ax_spec, ax_cond = fig.subplots(1, 3)

    series = [("drift", "‖Θ_t − Θ_ref‖/‖Θ_ref‖"), ("kernel_distance", "1 − cos(Θ_t, Θ_ref)"),
              ("param_movement", "‖θ_t − θ_0‖/‖θ_0‖"), ("limit_distance", "‖Θ_t − Θ∞‖/‖Θ∞‖")]
    for field, label in series:
        values = [getattr(r, field) for r in records]
        if any(v is not None for v in values):
            ax_drift.plot(steps, [math.nan if v is None else v for v in values], ".-", label=label)
    ax_drift.set(xlabel="optimizer step", title="kernel drift")
    ax_drift.set_yscale("log", nonpositive="mask")
    ax_drift.legend(fontsize="small")

    k = max((len(r.eigenvalues) for r in records), default=0)
    for i in range(k):
        ax_spec.plot(steps, [r.eigenvalues[i] if i < len(r.eigenvalues) else math.nan
                             for r in records], ".-", label=f"λ{i + 1}")
    ax_spec.set(xlabel="optimizer step", title=f"top-{k} eigenvalues of Θ_t")
    ax_spec.set_yscale("log", nonpositive="mask")
    ax_spec.legend(fontsize="small", ncol=2)

    ax_cond.plot(steps, [math.nan if r.condition_number is None else r.condition_number
                         for r in records], ".-", color="C0")
    ax_cond.set(xlabel="optimizer step", title="conditioning and alignment")
    ax_cond.set_ylabel("condition number λ_max/λ_min", color="C0")
    ax_cond.set_yscale("log", nonpositive="mask")
    if any(r.label_alignment is not None for r in records):
        twin = ax_cond.twinx()
        twin.plot(steps, [math.nan if r.label_alignment is None else r.label_alignment
                          for r in records], ".-", color="C1")
        twin.set_ylabel("label alignment ⟨Θ, YYᵀ⟩/(‖Θ‖‖YYᵀ‖)", color="C1")
    if path is not None:
        fmt = os.path.splitext(os.fspath(path))[1][1:] or "png"
        atomic_write(path, lambda f: fig.savefig(f, format=fmt), binary=True)
    return fig
