"""Moved to ratkit.bench.device_check (its command line to ratkit.cli.device_check_main); this name
keeps old imports working and is the entry ``python -m ratkit.device_check`` (scripts/device_check.sh)."""
import sys

from ratkit.bench import device_check as _moved

if __name__ == "__main__":
    from ratkit.cli import device_check_main

    sys.exit(device_check_main())
sys.modules[__name__] = _moved
