"""Kernel drift during training: ``KernelDriftTracker`` and its records.

- ``tracker``: ``KernelDriftTracker``;
- ``inputs``: probe/target checks, output projection, rank and autocast switches;
- ``records``: one record's metrics, CSV, TensorBoard scalars and plots.
"""

from .records import DriftRecord, label_alignment
from .tracker import KernelDriftTracker, projection_matrix

__all__ = ["DriftRecord", "KernelDriftTracker", "label_alignment", "projection_matrix"]
