"""A PyTorch Lightning callback that tracks the NTK's drift while a ``Trainer`` fits.

    >>> from torch_ntk.integrations.lightning import KernelDriftCallback
    >>> callback = KernelDriftCallback(probe_x, probe_y, every=10)
    >>> trainer = lightning.Trainer(callbacks=[callback], logger=CSVLogger("logs"))
    >>> trainer.fit(module, loader)
    >>> callback.tracker.history[-1].drift

Works with ``lightning`` (``lightning.pytorch``) or ``pytorch_lightning``, whichever is
installed (with both, the callback is an instance of both ``Callback`` classes);
``pip install torch-ntk[lightning]``. Importing this module without either raises an
ImportError saying so.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..tracking.records import DriftRecord, log_scalars, scalars
from ..tracking.tracker import KernelDriftTracker

__all__ = ["KernelDriftCallback"]


def _callback_bases() -> tuple[type, ...]:
    bases = []
    try:
        from lightning.pytorch import Callback as LightningCallback
        bases.append(LightningCallback)
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback as PLCallback
        if PLCallback not in bases:
            bases.append(PLCallback)
    except ImportError:
        pass
    if not bases:
        raise ImportError(
            "torch_ntk.integrations.lightning needs PyTorch Lightning, an optional dependency: "
            "pip install lightning (or pytorch_lightning, or torch-ntk[lightning])"
        )
    return tuple(bases)


class KernelDriftCallback(*_callback_bases()):
    """Record the empirical NTK on a probe set after every ``every``-th optimizer step.

    The callback builds a :class:`torch_ntk.KernelDriftTracker` when training starts
    (``on_train_start``: after a checkpoint's weights and step counter are restored) on
    the LightningModule, or on its attribute ``submodule`` (e.g. "net", so that an
    ``nn.Sequential`` MLP lifts and ``limit_distance`` is recorded). After each training
    batch it brings the tracker's step count to ``trainer.global_step`` (optimizer
    steps; gradient accumulation counts one), which records when a multiple of
    ``every`` is reached, and logs the record's scalars (``ntk/drift``,
    ``ntk/alignment_distance``, … as in :func:`torch_ntk.tracking.records.scalars`) through
    every logger of the Trainer with ``logger.log_metrics(metrics, step=record.step)``
    — on global rank 0, at each record, independently of ``log_every_n_steps``.

    The history is ``callback.tracker.history``. The tracker's state is saved in the
    Trainer's checkpoints (``state_dict``) and restored on ``fit(..., ckpt_path=...)``,
    so a resumed fit continues the history (the tracker is then rebuilt and its state
    loaded; the rebuild computes one kernel that is discarded). Under DDP only global
    rank 0 computes records (the tracker's ``rank_zero_only``).

    Args:
        probe_x: [N, ...] probe inputs (moved to the module's device and dtype).
        probe_y: optional probe targets for ``label_alignment``.
        every: record after every ``every``-th optimizer step.
        submodule: name of the LightningModule attribute holding the network to
            track (None: the LightningModule itself; its forward must map probe_x to
            the outputs).
        **tracker_options: passed to :class:`torch_ntk.KernelDriftTracker` (reference,
            top_k, projections, spectrum_every, writer, …). A ``writer`` receives the
            step-0 record once, not again on resume.
    """

    def __init__(self, probe_x: Tensor, probe_y: Optional[Tensor] = None, every: int = 10, *,
                 submodule: Optional[str] = None, **tracker_options: Any) -> None:
        super().__init__()
        if not isinstance(probe_x, Tensor):
            raise TypeError(f"KernelDriftCallback: probe_x must be a torch.Tensor; got {type(probe_x).__name__}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"KernelDriftCallback: every must be a positive integer; got {every!r}")
        if "model" in tracker_options:
            raise TypeError("KernelDriftCallback: the model is the LightningModule (or its "
                            "`submodule`); do not pass model=")
        self.probe_x, self.probe_y, self.every = probe_x, probe_y, every
        self.submodule = submodule
        self.tracker_options = dict(tracker_options)
        self.tracker: Optional[KernelDriftTracker] = None
        self._pending_state: Optional[dict] = None
        self._writer = self.tracker_options.pop("writer", None)

    # -- Lightning hooks ----------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        if self.tracker is not None:
            return  # a second fit with the same callback continues its tracker
        # Built without the writer, so that a resumed fit does not write step 0 again.
        self.tracker = KernelDriftTracker(self._network(pl_module), self.probe_x, self.probe_y,
                                          every=self.every, **self.tracker_options)
        if self._pending_state is not None:
            self.tracker.load_state_dict(self._pending_state)
            self._pending_state = None
        else:
            for record in self.tracker.history:
                self._log(trainer, record, self._writer)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.tracker is None:
            return
        behind = trainer.global_step - self.tracker.steps
        if behind > 0:
            record = self.tracker.step(behind)
            if record is not None:
                self._log(trainer, record, self._writer)

    def state_dict(self) -> dict[str, Any]:
        if self.tracker is None:
            return {} if self._pending_state is None else {"tracker": self._pending_state}
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("tracker")
        if state is None:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state)
        else:
            self._pending_state = state

    # -- internals ----------------------------------------------------------------------

    def _network(self, pl_module: nn.Module) -> nn.Module:
        if self.submodule is None:
            return pl_module
        network = getattr(pl_module, self.submodule, None)
        if not isinstance(network, nn.Module):
            raise ValueError(
                f"KernelDriftCallback: submodule={self.submodule!r} is not an nn.Module attribute "
                f"of {type(pl_module).__name__}"
            )
        return network

    @staticmethod
    def _log(trainer: Any, record: DriftRecord, writer: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = scalars(record)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record.step)
        if writer is not None:
            log_scalars(writer, record)
