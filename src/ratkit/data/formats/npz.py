"""NumPy archives: ``DIR/train.npz`` and ``DIR/test.npz``, each with arrays ``x`` and ``y``.

``x`` holds the images channels-last, N x H x W or N x H x W x C with C 1 or 3, either as
uint8 0..255 (kept as uint8, a quarter of float32's memory) or as floating point in [0, 1]
(kept as float32); ``y`` the integer labels, N or N x 1. An optional ``classes`` array of
strings in ``train.npz`` names the classes (``classes[k]`` is label k).

Archives are read with ``allow_pickle=False``: a pickle is a program, and an object array
would run code named by the file. Anything else than the above raises a one-line
:class:`~ratkit.data.errors.DataError` naming the file.

Example (writing a dataset ratkit reads)::

    np.savez("mydata/train.npz", x=train_images, y=train_labels, classes=np.array(["cat", "dog"]))
    np.savez("mydata/test.npz", x=test_images, y=test_labels)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .common import check_labels

__all__ = ["check_label_range", "load_npz_split", "npz_class_names", "npz_num_classes"]


class _Archive:
    """An opened ``.npz`` whose arrays are read one by one, each failure naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise DataError(
                f"{path}: missing file, expected {path.name} with arrays x and y in {path.parent}"
            )
        try:
            self.npz = np.load(path, allow_pickle=False)
        except Exception as e:  # ValueError (pickled data), OSError, BadZipFile, EOFError, ...
            raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
        if not isinstance(self.npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, expected an .npz archive with arrays x and y")

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.npz.close()

    def has(self, key: str) -> bool:
        return key in self.npz.files

    def get(self, key: str) -> np.ndarray:
        if not self.has(key):
            found = ", ".join(self.npz.files) or "none"
            raise DataError(f"{self.path}: missing array {key!r}, found arrays {found}")
        try:
            return self.npz[key]
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise DataError(
                    f"{self.path}: array {key!r} holds Python objects, refused (loading it would unpickle); "
                    "store numbers or strings"
                ) from e
            raise DataError(f"{self.path}: cannot read array {key!r} ({type(e).__name__}: {e})") from e
        except Exception as e:  # a corrupt member: BadZipFile, EOFError, zlib.error, ...
            raise DataError(f"{self.path}: cannot read array {key!r} ({type(e).__name__}: {e})") from e


def _images(path: Path, x: np.ndarray) -> torch.Tensor:
    """``x`` checked and turned into N x C x H x W: uint8 as is, floating point as float32."""
    if x.ndim not in (3, 4):
        raise DataError(
            f"{path}: x has shape {x.shape}, expected N x H x W or N x H x W x C (channels last)"
        )
    if x.ndim == 4 and x.shape[3] not in (1, 3):
        raise DataError(
            f"{path}: x has shape {x.shape} with {x.shape[3]} channels, expected N x H x W x C "
            "(channels last) with C 1 or 3"
        )
    if 0 in x.shape:
        raise DataError(f"{path}: x has shape {x.shape}, expected at least one image of at least 1x1 pixels")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            raise DataError(f"{path}: x has {int(x.size - finite.sum())} non-finite values (NaN or inf)")
        low, high = x.min(), x.max()
        if low < 0 or high > 1:
            raise DataError(
                f"{path}: x has values in [{float(low):g}, {float(high):g}], expected floating point "
                "in [0, 1] (or uint8 0..255)"
            )
    else:
        raise DataError(f"{path}: x has dtype {x.dtype}, expected uint8 (0..255) or floating point (0..1)")
    nhwc = x[..., None] if x.ndim == 3 else x
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    return torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2), dtype=dtype))


def _labels(path: Path, y: np.ndarray, n: int) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: y has shape {y.shape}, expected N or N x 1 labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y has dtype {y.dtype}, expected integer labels 0..C-1")
    if y.shape[0] != n:
        raise DataError(f"{path}: {y.shape[0]} labels in y but {n} images in x, expected equal counts")
    if (y < 0).any():
        raise DataError(f"{path}: label {int(y[y < 0][0])} is negative, expected labels 0..C-1")
    if y.dtype == np.uint64 and y.max() > np.iinfo(np.int64).max:
        raise DataError(f"{path}: label {int(y.max())} is too large, expected labels 0..C-1")
    return torch.from_numpy(y.astype(np.int64))


def load_npz_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``directory/<split>.npz``: (x N x C x H x W, uint8 or float32; y int64 N).

    Labels are only checked to be non-negative integers here; the range 0..C-1 needs the
    number of classes: :func:`npz_num_classes` of the training labels, then
    :func:`check_label_range` on each split.

    Example: ``x, y = load_npz_split(Path("mydata"), "train")``
    """
    path = Path(directory) / f"{split}.npz"
    with _Archive(path) as archive:
        x = _images(path, archive.get("x"))
        y = _labels(path, archive.get("y"), x.shape[0])
    return x, y


def npz_num_classes(train_y: torch.Tensor, class_names: tuple[str, ...] | None = None) -> int:
    """The number of classes: ``len(class_names)`` when the archive names them, else the largest
    training label + 1.

    Example: ``npz_num_classes(torch.tensor([0, 2, 1]))`` is 3."""
    if class_names is not None:
        return len(class_names)
    return int(train_y.max()) + 1 if train_y.numel() else 0


def check_label_range(path: Path, y: torch.Tensor | np.ndarray, num_classes: int) -> None:
    """Raise a one-line :class:`DataError` naming ``path`` unless every label is in 0..num_classes-1.

    Example: ``check_label_range(Path("mydata/test.npz"), test_y, npz_num_classes(train_y))``"""
    labels = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    check_labels(Path(path), labels, num_classes)


def _names(path: Path, archive: _Archive) -> tuple[str, ...] | None:
    if not archive.has("classes"):
        return None
    names = archive.get("classes")
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{path}: classes has dtype {names.dtype} and shape {names.shape}, expected a list of strings")
    try:
        out = tuple(str(n) if names.dtype.kind == "U" else n.decode("utf-8") for n in names)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: classes are bytes but not UTF-8 ({e})") from e
    empty = [i for i, n in enumerate(out) if not n.strip()]
    if empty:
        raise DataError(f"{path}: class name {empty[0]} is empty, expected a name for every class")
    seen: set[str] = set()
    for n in out:
        if n in seen:
            raise DataError(f"{path}: class name {n!r} appears twice, expected distinct names")
        seen.add(n)
    return out


def npz_class_names(directory: Path) -> tuple[str, ...] | None:
    """The class names stored as ``classes`` in ``train.npz``, or None when it has none.

    If ``test.npz`` stores ``classes`` too, they must be the same. The caller checks that the
    labels fit (``check_label_range`` with ``len(names)`` classes).

    Example: ``npz_class_names(Path("mydata"))`` is ``("cat", "dog")``.
    """
    directory = Path(directory)
    train_path, test_path = directory / "train.npz", directory / "test.npz"
    with _Archive(train_path) as archive:
        names = _names(train_path, archive)
    if test_path.is_file():
        with _Archive(test_path) as archive:
            test_names = _names(test_path, archive)
        if test_names is not None and test_names != names:
            raise DataError(
                f"{test_path}: classes {list(test_names)} differ from those of {train_path.name} "
                f"{list(names) if names is not None else '(none)'}"
            )
    return names
