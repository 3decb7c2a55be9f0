import sys

from undertow.worker.cli import main

sys.exit(main())
