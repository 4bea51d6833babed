"""``python -m torch_ntk``: the ``torch-ntk`` command (see torch_ntk/cli.py)."""

from .cli import main

raise SystemExit(main())
