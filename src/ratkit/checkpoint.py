"""Moved to ratkit.checkpoints.native; this name keeps old imports working."""
import sys

from ratkit.checkpoints import native as _moved

sys.modules[__name__] = _moved
