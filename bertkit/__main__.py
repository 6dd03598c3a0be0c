"""`python -m bertkit ...` (what `torchrun ... -m bertkit pretrain ...` runs)."""

import sys

from .cli import main

sys.exit(main())
