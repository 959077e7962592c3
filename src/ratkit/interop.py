"""Moved to ratkit.checkpoints.foreign; this name keeps old imports working."""
import sys

from ratkit.checkpoints import foreign as _moved

sys.modules[__name__] = _moved
