"""Moved to ratkit.train; this package keeps old imports (``ratkit.training.fit``, ...) working."""
import importlib
import sys

for _name in ("checkpoints", "collapse", "fit", "run_log", "state", "stopping"):
    globals()[_name] = sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"ratkit.train.{_name}")
