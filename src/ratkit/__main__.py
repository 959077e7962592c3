"""``python -m ratkit`` is the ``rat`` command (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
