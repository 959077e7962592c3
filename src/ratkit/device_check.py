"""Moved to ratkit.bench.device_check; this name keeps old imports and ``python -m ratkit.device_check`` working."""
import sys

from ratkit.bench import device_check as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
