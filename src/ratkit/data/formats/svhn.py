"""SVHN's cropped-digits ``.mat`` files (MATLAB v5, read with scipy).

Each file holds ``X`` (32 x 32 x 3 x N uint8) and ``y`` (N x 1, digits 1..10 where 10 means 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ..tensordata import TensorData
from .common import check_labels, join_files, to_float_images

if TYPE_CHECKING:
    from ..info import DatasetInfo


def load(info: DatasetInfo, directory: Path, files: tuple[str, ...]) -> TensorData:
    """Read one split: the images of ``files`` (usually one, e.g. ``train_32x32.mat``) in order."""
    images, labels = join_files([_read_mat(directory / f) for f in files])
    return TensorData(to_float_images(images), torch.from_numpy(labels), info)


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images N x C x H x W uint8, labels 0..9 int64) of one file, checked strictly."""
    if not path.is_file():
        raise DataError(f"{path}: missing SVHN file, looked for {path.name} in {path.parent}")
    import scipy.io  # imported lazily: only SVHN needs scipy

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many types (ValueError, MatReadError, NotImplementedError, ...)
        raise DataError(f"{path}: unreadable MATLAB file ({type(e).__name__}: {e})") from e
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: missing variable {key!r}, expected X (32x32x3xN) and y (Nx1)")
    X, y = mat["X"], mat["y"]
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X must be a uint8 array of shape 32x32x3xN, got {X.dtype} {X.shape}")
    if y.ndim not in (1, 2) or (y.ndim == 2 and 1 not in y.shape) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must be an integer array of shape Nx1, got {y.dtype} {y.shape}")
    y = y.reshape(-1)
    if y.shape[0] != X.shape[3]:
        raise DataError(f"{path}: {y.shape[0]} labels in y but {X.shape[3]} images in X, expected equal counts")
    check_labels(path, y, 10, low=1)
    labels = y.astype(np.int64) % 10  # SVHN stores digit 0 as label 10
    # X is indexed [h, w, c, i]; we want [i, c, h, w].
    return X.transpose(3, 2, 0, 1), labels
