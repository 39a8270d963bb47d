"""``python -m host_proxy.cli``: the same as the ``uvmexec`` console script."""

import sys

from . import main

sys.exit(main())
