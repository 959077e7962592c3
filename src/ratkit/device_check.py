"""Moved to ratkit.bench.device_check (its command line too). Imported, this name is the moved module,
with a DeprecationWarning, until ratkit 0.3; run, it is still the documented entry ``python -m
ratkit.device_check`` (scripts/device_check.sh), without a warning."""
import sys

from ratkit.moved import warn_moved
from ratkit.bench import device_check as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
warn_moved("ratkit.device_check", "ratkit.bench.device_check")
sys.modules[__name__] = _moved
