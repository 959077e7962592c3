"""Helpers every format parser shares: label checks and the uint8 -> float conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError


def to_float_images(arr: np.ndarray) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [0, 1] (one copy, done in place afterwards)."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return x.div_(255.0)


def check_labels(path: Path, labels: np.ndarray, num_classes: int, low: int = 0) -> None:
    """Raise a DataError naming ``path`` unless every label is in ``low .. low + num_classes - 1``."""
    if labels.size and (labels.min() < low or labels.max() >= num_classes + low):
        bad = labels[(labels < low) | (labels >= num_classes + low)][0]
        raise DataError(
            f"{path}: label {int(bad)} out of range, expected {low}..{num_classes + low - 1}"
        )


def join_files(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the (images, labels) read from a split's files; one file is returned as is."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
