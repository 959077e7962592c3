"""Moved to ratkit.train; this package keeps old imports (``ratkit.training.fit``, ...) working, with a
DeprecationWarning, until ratkit 0.3."""
import importlib
import sys

from ratkit.moved import warn_moved

warn_moved("ratkit.training", "ratkit.train")
for _name in ("checkpoints", "collapse", "fit", "run_log", "state", "stopping"):
    globals()[_name] = sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"ratkit.train.{_name}")
