"""``python -m aekit``: the command line (what torchrun starts with ``torchrun ... -m aekit train ...``)."""

import sys

from .cli import main

__all__: list[str] = []

sys.exit(main())
