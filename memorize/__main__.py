"""``python -m memorize``: the ``memorize`` command, as ``python -m memorize.cli`` and the console script."""

import sys

from memorize.cli import main

sys.exit(main())
