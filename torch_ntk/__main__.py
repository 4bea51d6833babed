"""``python -m torch_ntk``: the ``torch-ntk`` command (see torch_ntk/cli.py)."""

from .cli.main import main

raise SystemExit(main())
