"""The IDX format of (Fashion-)MNIST: big-endian uint8 arrays, plain or gzipped.

A split is two files, images (N x H x W, magic 0x803) then labels (N, magic 0x801); each
may be stored as ``name`` or ``name.gz``. The image size is taken from the header.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ..tensordata import TensorData
from .common import check_labels, to_float_images

if TYPE_CHECKING:
    from ..info import DatasetInfo

SUFFIXES = ("", ".gz")  # each file may be stored plain or gzipped
IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
LABELS_MAGIC = 0x00000801  # uint8, 1 dim


def load(info: DatasetInfo, directory: Path, files: tuple[str, ...]) -> TensorData:
    """Read one split: ``files`` is (images file, labels file), each without ``.gz``."""
    images_name, labels_name = files
    images_path = _find_file(directory, images_name)
    labels_path = _find_file(directory, labels_name)
    images = _read_idx(images_path, IMAGES_MAGIC, "uint8 images")
    labels = _read_idx(labels_path, LABELS_MAGIC, "uint8 labels")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path.name} has "
            f"{images.shape[0]} images, expected equal counts"
        )
    check_labels(labels_path, labels, info.num_classes)
    n, h, w = images.shape
    if (1, h, w) != info.image_shape:
        info = dataclasses.replace(info, image_shape=(1, h, w))
    x = to_float_images(images.reshape(n, 1, h, w))
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorData(x, y, info)


def _find_file(directory: Path, base: str) -> Path:
    for candidate in (directory / (base + suffix) for suffix in SUFFIXES):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory / base}: missing IDX file, looked for {base} and {base}.gz in {directory}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def _read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """Parse a big-endian IDX file of uint8 values and return it with its header shape."""
    buf = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(buf)} bytes, no header)")
    got = int.from_bytes(buf[:4], "big")
    if got != magic:
        raise DataError(f"{path}: wrong IDX magic number 0x{got:08x}, expected 0x{magic:08x} ({what})")
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, expected {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    count = math.prod(dims)  # Python ints: a hostile header cannot overflow this
    if len(buf) - header != count:
        kind = "truncated" if len(buf) - header < count else "oversized"
        raise DataError(
            f"{path}: {kind} IDX file, header {dims} promises {count} data bytes, "
            f"found {len(buf) - header}"
        )
    return np.frombuffer(buf, dtype=np.uint8, count=count, offset=header).reshape(dims)
