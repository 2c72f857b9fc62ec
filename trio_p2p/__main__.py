"""``python -m trio_p2p``: the command-line tool."""

import sys

from ._cli import main

sys.exit(main())
