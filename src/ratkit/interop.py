"""Moved to ratkit.checkpoints.foreign; this name keeps old imports working, with a
DeprecationWarning, until ratkit 0.3."""
import sys

from ratkit.moved import warn_moved
from ratkit.checkpoints import foreign as _moved

warn_moved("ratkit.interop", "ratkit.checkpoints.foreign")

sys.modules[__name__] = _moved
