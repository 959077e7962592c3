"""The one place where train/eval modes are switched, and always restored."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train or eval mode and restore every submodule's own flag afterwards.

    Restoring per module (not just the root) matters: a user may have frozen BatchNorm
    layers in eval mode inside a model that is otherwise training.
    """
    saved = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for module, flag in saved:
            module.training = flag
