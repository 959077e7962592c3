"""Moved to ratkit.checkpoints.native; this name keeps old imports working, with a
DeprecationWarning, until ratkit 0.3."""
import sys

from ratkit.moved import warn_moved
from ratkit.checkpoints import native as _moved

warn_moved("ratkit.checkpoint", "ratkit.checkpoints.native")

sys.modules[__name__] = _moved
