"""``python -m torch_ntk.distributed kernel ...`` = ``torch-ntk kernel --distributed ...``;
``python -m torch_ntk.distributed solve ...``: CG kernel regression."""

import sys

if sys.argv[1:2] == ["kernel"]:
    from ..cli.main import main as cli_main

    sys.exit(cli_main(["kernel", "--distributed", *sys.argv[2:]]))

from .command import main

sys.exit(main())
