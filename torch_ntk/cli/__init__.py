"""The ``torch-ntk`` programs (not API): ``main`` parses arguments and dispatches.

- ``main``: the parser and the ``demo``/``reproduce``/``quickstart``/``bench`` commands;
- ``kernel``: the ``torch-ntk kernel`` command;
- ``quickstart``: the infinite-width kernels against random networks, printed.
"""

from .main import build_parser, main, parse_bytes

__all__ = ["build_parser", "main", "parse_bytes"]
