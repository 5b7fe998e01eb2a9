"""``python -m disdis`` (and ``torchrun -m disdis``): the same command line as ``disdis``."""

import sys

from disdis.cli import main

sys.exit(main())
