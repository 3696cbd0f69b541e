"""``python -m memorize.cli``: the ``memorize`` command."""

import sys

from memorize.cli import main

sys.exit(main())
