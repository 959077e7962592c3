"""Moved to ratkit.evaluate.chunks; this name keeps old imports working, with a
DeprecationWarning, until ratkit 0.3."""
import sys

from ratkit.moved import warn_moved
from ratkit.evaluate import chunks as _moved

warn_moved("ratkit.eval_chunks", "ratkit.evaluate.chunks")

sys.modules[__name__] = _moved
