"""The old names of moved modules: the warning they give, and the release that removes them.

On the bottom floor, so that an old name anywhere in the tree (``ratkit.data.user``) can warn
without importing a floor above it."""

import warnings

REMOVED_IN = "ratkit 0.3"  # the release that removes the old names of moved modules


def warn_moved(old: str, new: str) -> None:
    """A ``DeprecationWarning`` that ``old`` moved to ``new``, for the old names that still work;
    shown at the line that imports (or reads) ``old``: called from the old module's body, or from a
    module's ``__getattr__`` (``warnings`` skips the import machinery's frames)."""
    warnings.warn(f"{old} is deprecated and will be removed in {REMOVED_IN}; use {new}", DeprecationWarning,
                  stacklevel=3)
