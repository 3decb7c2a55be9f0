"""``python -m undertow``: the command line, as the ``undertow`` script runs it."""

import sys

from undertow.worker.cli import main

sys.exit(main())
