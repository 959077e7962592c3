"""The dataset registry: one :class:`DatasetInfo` entry per dataset, and loading by name.

An entry holds everything ratkit knows about a dataset: the facts models, attacks and
augmentation need (shape, classes, normalisation, eps) and where its files are and which
format parses them (:class:`DatasetFiles`). The parsers live in :mod:`ratkit.data.formats`,
one module per format. Adding a dataset is one entry in :data:`DATASETS` (docs/extending.md).

Files are parsed strictly: anything that does not match the documented format raises
:class:`~ratkit.data.errors.DataError` with a one-line message naming the file, instead
of silently training on garbage.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError
from .formats import FORMATS, FileFormat
from .info import SPLITS, DatasetFiles, DatasetInfo
from .synthetic import SYNTHETIC, synthetic_split
from .tensordata import TensorData

__all__ = ["DATASETS", "SPLITS", "DatasetFiles", "DatasetInfo", "dataset_info", "default_data_dir", "load_dataset"]


_DIGITS = tuple(str(i) for i in range(10))
_MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")  # the IDX names both MNISTs use
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        image_shape=(1, 28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        linf_eps=0.1,
        # Not label-preserving in the usual protocol: Fashion-MNIST is trained unflipped.
        hflip=False,
        crop_padding=2,
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        files=DatasetFiles(
            format="idx", train=_MNIST_TRAIN, test=_MNIST_TEST,
            subdirs=("fashion-mnist", "FashionMNIST/raw"),
            debian_dir=Path("/usr/share/datasets/fashion-mnist"),
        ),
    ),
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        image_shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        linf_eps=0.1,
        hflip=False,  # a flipped digit is not the same digit
        crop_padding=2,
        class_names=_DIGITS,
        files=DatasetFiles(
            format="idx", train=_MNIST_TRAIN, test=_MNIST_TEST,
            subdirs=("mnist", "MNIST/raw"),
            debian_dir=Path("/usr/share/datasets/mnist"),
        ),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        image_shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
        linf_eps=8 / 255,
        hflip=True,
        crop_padding=4,
        class_names=(
            "airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck",
        ),
        files=DatasetFiles(
            format="cifar10-python",
            train=tuple(f"data_batch_{i}" for i in range(1, 6)),
            test=("test_batch",),
            subdirs=("cifar-10-batches-py",),
        ),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        image_shape=(3, 32, 32),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        linf_eps=8 / 255,
        hflip=True,
        crop_padding=4,
        class_names=tuple(f"class_{i}" for i in range(100)),
        files=DatasetFiles(format="cifar100-python", train=("train",), test=("test",), subdirs=("cifar-100-python",)),
    ),
    "svhn": DatasetInfo(
        name="svhn",
        num_classes=10,
        image_shape=(3, 32, 32),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        linf_eps=8 / 255,
        hflip=False,  # house-number digits: flipping changes the label
        crop_padding=4,
        class_names=_DIGITS,
        files=DatasetFiles(format="svhn-mat", train=("train_32x32.mat",), test=("test_32x32.mat",), subdirs=("svhn",)),
    ),
    "synthetic": SYNTHETIC,  # generated in memory: its entry lives with its generator
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset's registry entry by name, failing with the list of known names.

    Example: ``dataset_info("cifar10").linf_eps`` is 8/255; ``dataset_info("mnist").image_shape`` is (1, 28, 28).
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"{name!r}: unknown dataset, expected one of {', '.join(sorted(DATASETS))}"
        ) from None


def _file_format(info: DatasetInfo, files: DatasetFiles) -> FileFormat:
    try:
        return FORMATS[files.format]
    except KeyError:
        raise DataError(
            f"{info.name}: unknown file format {files.format!r}, expected one of {', '.join(sorted(FORMATS))}"
        ) from None


# --------------------------------------------------------------------- data directories


def default_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Find the directory holding dataset ``name``'s files.

    Resolution order: the explicit ``data_dir`` argument (the CLI's ``--data-dir``), then
    the ``RAT_DATA_DIR`` environment variable, then the entry's Debian package directory
    (``/usr/share/datasets/fashion-mnist`` for fashion-mnist, ``/usr/share/datasets/mnist``
    for mnist). Other datasets need one of the first two.

    Accepted layouts for the chosen directory ``D``:

    * ``D`` holds the files directly (``train-images-idx3-ubyte[.gz]`` ...,
      ``data_batch_1`` ... ``test_batch``, ``train``/``test``, ``train_32x32.mat`` ...);
    * ``D`` is a parent with the dataset in one of the entry's sub-folders:
      ``D/fashion-mnist/``, ``D/FashionMNIST/raw/``, ``D/mnist/``, ``D/MNIST/raw/``,
      ``D/cifar-10-batches-py/``, ``D/cifar-100-python/``, ``D/svhn/``.

    If neither layout matches, ``D`` itself is returned and the loader reports which files
    it looked for.

    Example: ``default_data_dir("cifar10", "data")`` is ``data/cifar-10-batches-py`` if that folder exists.
    """
    info = dataset_info(name)
    files = info.files
    if files is None:
        raise DataError(f"{name}: generated in memory, it has no data directory")
    if data_dir is not None:
        base, source = Path(data_dir), "--data-dir"
    elif os.environ.get("RAT_DATA_DIR"):
        base, source = Path(os.environ["RAT_DATA_DIR"]), "RAT_DATA_DIR"
    elif files.debian_dir is not None:
        base, source = files.debian_dir, None
        if not base.is_dir():
            raise DataError(
                f"{base}: {name} not found in the Debian location; "
                "pass --data-dir or set RAT_DATA_DIR"
            )
    else:
        raise DataError(f"{name}: no data directory given; pass --data-dir or set RAT_DATA_DIR")
    if not base.exists():
        raise DataError(f"{base}: data directory ({source}) for {name} does not exist")
    if not base.is_dir():
        raise DataError(f"{base}: data directory ({source}) for {name} is not a directory")
    suffixes = _file_format(info, files).suffixes
    if any((base / (f + s)).is_file() for f in files.train + files.test for s in suffixes):
        return base
    for sub in files.subdirs:
        if (base / sub).is_dir():
            return base / sub
    return base


# ------------------------------------------------------------------------- loading


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> TensorData:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` into memory.

    See :func:`default_data_dir` for where files are looked for; ``synthetic`` needs no files.
    The entry's format (:data:`ratkit.data.formats.FORMATS`) parses the split's files.

    Example: ``test = load_dataset("fashion-mnist", "test")`` gives ``test.x`` (10000 x 1 x 28 x 28,
    floats in [0, 1]) and ``test.y`` (int64 labels); ``load_dataset("cifar10", "train", data_dir="data")``.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r}, expected 'train' or 'test'")
    if info.files is None:
        return synthetic_split(info, split)
    directory = default_data_dir(name, data_dir)
    return _file_format(info, info.files).load(info, directory, info.files.for_split(split))
