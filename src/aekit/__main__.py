"""``python -m aekit``: the command line (what torchrun starts with ``torchrun ... -m aekit train ...``)."""

import sys

from .cli import main

sys.exit(main())
