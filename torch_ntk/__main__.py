"""``python -m torch_ntk``: the quick demonstration (see torch_ntk/quickstart.py)."""

from .quickstart import main

main()
