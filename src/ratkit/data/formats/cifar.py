"""The CIFAR "python version": pickled dicts of uint8 rows, read with a restricted unpickler.

A split is one or more batch files, each a dict with ``b"data"`` (N x 3072: the R, G, B
planes of 32 x 32, row-major) and the labels under ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` (CIFAR-100).
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ..tensordata import TensorData
from .common import check_labels, join_files, to_float_images

if TYPE_CHECKING:
    from ..info import DatasetInfo


def load_cifar10(info: DatasetInfo, directory: Path, files: tuple[str, ...]) -> TensorData:
    """Read one split of CIFAR-10 batches (labels under ``b"labels"``)."""
    return _load(info, directory, files, b"labels")


def load_cifar100(info: DatasetInfo, directory: Path, files: tuple[str, ...]) -> TensorData:
    """Read one split of CIFAR-100 batches (the fine labels, ``b"fine_labels"``)."""
    return _load(info, directory, files, b"fine_labels")


def _load(info: DatasetInfo, directory: Path, files: tuple[str, ...], label_key: bytes) -> TensorData:
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise DataError(
            f"{directory / missing[0]}: missing {info.name} batch file(s) {', '.join(missing)} in {directory}"
        )
    data, labels = join_files([_load_batch(directory / f, label_key, info.num_classes) for f in files])
    # Rows are the R, G, B planes of 32 x 32 each, row-major.
    x = to_float_images(data.reshape(-1, 3, 32, 32))
    return TensorData(x, torch.from_numpy(labels), info)


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    """``_codecs.encode`` restricted to latin-1.

    Python 3 writes ``bytes`` under pickle protocol 2 as ``_codecs.encode(str, 'latin1')``,
    so numpy array data needs it; no other codec is allowed.
    """
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1", errors)


def _numpy_reconstruct():
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy multiarray._reconstruct not found")  # pragma: no cover


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, never call arbitrary globals.

    A pickle is a program; loading a user-supplied file with plain ``pickle.load`` can run
    anything. The CIFAR batches need only dicts, lists, bytes and numpy arrays.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise DataError(f"{self._path}: refusing to unpickle {module}.{name}")


def _load_pickle(path: Path) -> object:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can fail in almost any way
        raise DataError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e


def _get_key(path: Path, d: dict, key: bytes):
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    found = ", ".join(sorted(map(repr, d)))
    raise DataError(f"{path}: missing key {key!r}, found keys {found}")


def _load_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = _load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    data = _get_key(path, obj, b"data")
    labels = _get_key(path, obj, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array of shape N x 3072, got {desc}")
    try:
        labels = np.asarray(labels)
    except Exception as e:
        raise DataError(f"{path}: {label_key!r} is not a list of integers ({e})") from e
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: {label_key!r} must be a flat list of integers, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{path}: {labels.shape[0]} labels in {label_key!r} but {data.shape[0]} rows in b'data', "
            "expected equal counts"
        )
    check_labels(path, labels, num_classes)
    return data, labels.astype(np.int64)
