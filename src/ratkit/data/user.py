"""Moved to ratkit.data.source; this name keeps old imports working, with a DeprecationWarning,
until ratkit 0.3."""
import sys

from ratkit.data import source as _moved
from ratkit.moved import warn_moved

warn_moved("ratkit.data.user", "ratkit.data.source")

sys.modules[__name__] = _moved
