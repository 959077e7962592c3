"""On-disk dataset formats, one module each, and the table that names them.

Every format module exposes a loader with one signature::

    load(info: DatasetInfo, directory: Path, files: tuple[str, ...]) -> TensorData

which reads one split's ``files`` (the names a registry entry lists for that split) from
``directory`` and raises a one-line :class:`~ratkit.data.errors.DataError` naming the file
for anything that does not match the format. A dataset entry names its format by key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import cifar, idx, svhn

if TYPE_CHECKING:
    from ..info import DatasetInfo
    from ..tensordata import TensorData

__all__ = ["FORMATS", "FileFormat"]


@dataclass(frozen=True)
class FileFormat:
    """A parser, and the endings under which each of a split's files may be stored.

    ``default_data_dir`` uses ``suffixes`` to recognise a directory that holds the files
    directly (IDX files may be gzipped: ``("", ".gz")``).
    """

    load: Callable[[DatasetInfo, Path, tuple[str, ...]], TensorData]
    suffixes: tuple[str, ...] = ("",)


FORMATS: dict[str, FileFormat] = {
    "idx": FileFormat(idx.load, suffixes=idx.SUFFIXES),
    "cifar10-python": FileFormat(cifar.load_cifar10),
    "cifar100-python": FileFormat(cifar.load_cifar100),
    "svhn-mat": FileFormat(svhn.load),
}
