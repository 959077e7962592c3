"""Moved to ratkit.evaluate.chunks; this name keeps old imports working."""
import sys

from ratkit.evaluate import chunks as _moved

sys.modules[__name__] = _moved
