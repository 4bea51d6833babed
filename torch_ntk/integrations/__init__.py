"""Integrations with training frameworks (each an optional dependency, imported on use).

- :mod:`torch_ntk.integrations.lightning`: ``KernelDriftCallback``, a PyTorch Lightning
  callback driving a :class:`torch_ntk.KernelDriftTracker` (``pip install torch-ntk[lightning]``).

TensorBoard needs no integration module: ``KernelDriftTracker(..., writer=SummaryWriter(...))``.
"""
