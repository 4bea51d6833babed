"""The models benchmark: a thin script over torch_ntk.bench.models (also
``torch-ntk bench models``); ``--help`` lists the options. Results go to
benchmarks/results/ by default."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's torch_ntk

from torch_ntk.bench.models import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:], default_dir=os.path.join(HERE, "results"),
         prog="python benchmarks/models.py")
