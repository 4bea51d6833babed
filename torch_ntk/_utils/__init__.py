"""Private plumbing shared by every part of torch_ntk; imports nothing else from the package.

- ``files``: atomic writes and reading input matrices;
- ``runtime``: devices, generator forks and seeding, progress bars, the memory budget;
- ``validation``: argument checks with one wording;
- ``modes``: the kernel modes ``full``/``trace``/``diagonal`` and their shapes;
- ``model_context``: ``unwrap`` (NTK/compile/DDP wrappers) and ``kernel_context``.
"""
