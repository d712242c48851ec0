"""``python -m quoted.config FILE``, the path written in the units and the docs: the checker of
:mod:`quoted.server.config`, kept at its first address."""

import sys

from quoted.server.checks import main
from quoted.server.config import *  # noqa: F403  (the old import path keeps its names)

if __name__ == "__main__":
    sys.exit(main())
