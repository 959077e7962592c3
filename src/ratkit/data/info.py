"""The facts of a dataset (:class:`DatasetInfo`) and where its files are (:class:`DatasetFiles`).

Their own module so that the arrows run one way: the format parsers and the registry both
import these facts, and nothing here imports either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPLITS", "DatasetFiles", "DatasetInfo"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetFiles:
    """Where a dataset's files are looked for and which format parses them.

    ``train``/``test`` are the file names of each split in the order the format's loader
    takes them (IDX: images, then labels). ``subdirs`` are the sub-folders accepted below
    ``--data-dir``/``RAT_DATA_DIR``; ``debian_dir`` is where a Debian package installs the
    files, used when neither is given.
    """

    format: str  # a key of ratkit.data.formats.FORMATS
    train: tuple[str, ...]
    test: tuple[str, ...]
    subdirs: tuple[str, ...] = ()
    debian_dir: Path | None = None

    def for_split(self, split: str) -> tuple[str, ...]:
        return self.train if split == "train" else self.test


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: static facts about a dataset, and where its files are.

    ``mean``/``std`` are per channel and meant for the model's own normalisation layer,
    so attacks can work in [0, 1] pixel space where ``linf_eps``/``l2_eps`` are defined.
    ``files`` is None for a dataset generated in memory (``synthetic``).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    linf_eps: float
    l2_eps: float = 0.5
    hflip: bool = False
    crop_padding: int = 0
    class_names: tuple[str, ...] = ()
    files: DatasetFiles | None = None

    def protocol_eps(self, norm: str) -> float:
        """The radius the protocol evaluates at for ``norm`` ("Linf" or "L2").

        Example: ``dataset_info("cifar10").protocol_eps("Linf")`` is 8/255."""
        return float(self.l2_eps if norm == "L2" else self.linf_eps)


def no_radius_message(dataset: str) -> str:
    """Your own data has no protocol eps to fall back on: the one line that asks for it
    (:func:`ratkit.threat.no_radius` raises it; data/ reads it from here, below the threat floor)."""
    return (f"the threat model cannot be guessed for your own data ({dataset}); give the radius with "
            "--eps E (data.eps), e.g. --eps 0.0314 for 8/255")
