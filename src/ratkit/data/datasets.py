"""Dataset metadata and loaders that read the standard distribution formats into memory.

All datasets used here are small enough to hold as one float tensor, so loaders return
a :class:`TensorData` (``x`` float32 N x C x H x W in [0, 1], ``y`` int64 N) and batching is
plain tensor indexing; no DataLoader workers, no per-sample Python objects.

Files are parsed strictly: anything that does not match the documented format raises
:class:`~ratkit.data.errors.DataError` with a one-line message naming the file, instead
of silently training on garbage.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import io
import math
import os
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "TensorData",
    "dataset_info",
    "default_data_dir",
    "iterate_batches",
    "load_dataset",
    "split_train_val",
    "synthetic_data",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that models, attacks and augmentation need.

    ``mean``/``std`` are per channel and meant for the model's own normalisation layer,
    so attacks can work in [0, 1] pixel space where ``linf_eps``/``l2_eps`` are defined.
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


_DIGITS = tuple(str(i) for i in range(10))

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
    ),
    "synthetic": DatasetInfo(
        name="synthetic",
        num_classes=10,
        image_shape=(1, 28, 28),
        mean=(0.5,),
        std=(0.25,),
        linf_eps=0.1,
        hflip=False,
        crop_padding=0,
        class_names=tuple(f"class_{i}" for i in range(10)),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name, failing with the list of known names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"{name!r}: unknown dataset, expected one of {', '.join(sorted(DATASETS))}"
        ) from None


# --------------------------------------------------------------------------- TensorData


@dataclass
class TensorData:
    """An in-memory dataset: ``x`` float32 N x C x H x W in [0, 1], ``y`` int64 N."""

    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"{self.info.name}: expected x of shape N x C x H x W and y of shape N, "
                f"got x {tuple(self.x.shape)} and y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index_or_slice) -> TensorData:
        """Examples selected by a slice, an index tensor/list or a boolean mask.

        A plain int selects a one-example subset (the batch dimension is kept).
        """
        if isinstance(index_or_slice, int):
            index_or_slice = slice(index_or_slice, index_or_slice + 1 if index_or_slice != -1 else None)
        elif not isinstance(index_or_slice, slice):
            index_or_slice = torch.as_tensor(index_or_slice, device=self.x.device)
        return TensorData(self.x[index_or_slice], self.y[index_or_slice], self.info)

    def first(self, n: int) -> TensorData:
        """The first ``n`` examples (all of them if ``n`` exceeds the length)."""
        return self.subset(slice(0, max(0, min(int(n), len(self)))))


def split_train_val(data: TensorData, val_size: int, seed: int) -> tuple[TensorData, TensorData]:
    """Hold out ``val_size`` random examples, reproducibly for a given ``seed``.

    The two parts are disjoint and together cover ``data``; each keeps the original order,
    so only the choice of held-out examples depends on the seed.
    """
    n = len(data)
    if val_size < 0 or (val_size > 0 and val_size >= n):
        raise DataError(
            f"{data.info.name}: val_size {val_size} must be in 0..{max(n - 1, 0)} "
            f"(the dataset has {n} examples)"
        )
    if val_size == 0:
        return data, data.first(0)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    val_idx, _ = perm[:val_size].sort()
    train_idx, _ = perm[val_size:].sort()
    return data.subset(train_idx), data.subset(val_idx)


def iterate_batches(
    data: TensorData,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches straight from the in-memory tensors.

    With ``shuffle`` the order is a ``randperm`` drawn from ``generator`` (on its own
    device), so a seeded generator gives the same batches every run.
    """
    if batch_size <= 0:
        raise DataError(f"{data.info.name}: batch_size must be positive, got {batch_size}")
    n = len(data)
    order = None
    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device).to(data.x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield data.x[start:end], data.y[start:end]
        else:
            idx = order[start:end]
            yield data.x[idx], data.y[idx]


# --------------------------------------------------------------------- data directories

_DEBIAN_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

# Sub-folders accepted below a parent directory (RAT_DATA_DIR or --data-dir).
_SUBDIRS = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
    "mnist": ("mnist", "MNIST/raw"),
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "svhn": ("svhn",),
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_FILES = {"train": ("train",), "test": ("test",)}
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _marker_files(name: str) -> tuple[str, ...]:
    """File names whose presence shows a directory holds ``name`` directly."""
    if name in ("fashion-mnist", "mnist"):
        base = [f for pair in _IDX_FILES.values() for f in pair]
        return tuple(base + [f + ".gz" for f in base])
    if name == "cifar10":
        return _CIFAR10_FILES["train"] + _CIFAR10_FILES["test"]
    if name == "cifar100":
        return _CIFAR100_FILES["train"] + _CIFAR100_FILES["test"]
    if name == "svhn":
        return tuple(_SVHN_FILES.values())
    return ()


def default_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Find the directory holding dataset ``name``'s files.

    Resolution order: the explicit ``data_dir`` argument (the CLI's ``--data-dir``), then
    the ``RAT_DATA_DIR`` environment variable, then the Debian package directory
    (``/usr/share/datasets/fashion-mnist`` for fashion-mnist, ``/usr/share/datasets/mnist``
    for mnist). Other datasets need one of the first two.

    Accepted layouts for the chosen directory ``D``:

    * ``D`` holds the files directly (``train-images-idx3-ubyte[.gz]`` ...,
      ``data_batch_1`` ... ``test_batch``, ``train``/``test``, ``train_32x32.mat`` ...);
    * ``D`` is a parent with the dataset in a sub-folder: ``D/fashion-mnist/``,
      ``D/FashionMNIST/raw/``, ``D/mnist/``, ``D/MNIST/raw/``, ``D/cifar-10-batches-py/``,
      ``D/cifar-100-python/``, ``D/svhn/``.

    If neither layout matches, ``D`` itself is returned and the loader reports which files
    it looked for.
    """
    info = dataset_info(name)
    if info.name == "synthetic":
        raise DataError("synthetic: generated in memory, it has no data directory")
    if data_dir is not None:
        base, source = Path(data_dir), "--data-dir"
    elif os.environ.get("RAT_DATA_DIR"):
        base, source = Path(os.environ["RAT_DATA_DIR"]), "RAT_DATA_DIR"
    elif name in _DEBIAN_DIRS:
        base, source = _DEBIAN_DIRS[name], None
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
    markers = _marker_files(name)
    if any((base / m).is_file() for m in markers):
        return base
    for sub in _SUBDIRS.get(name, ()):
        if (base / sub).is_dir():
            return base / sub
    return base


# ------------------------------------------------------------------------- loaders


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> TensorData:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` into memory.

    See :func:`default_data_dir` for where files are looked for; ``synthetic`` needs no files.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r}, expected 'train' or 'test'")
    if name == "synthetic":
        return synthetic_data(
            _SYNTHETIC_SIZES[split], seed=_SYNTHETIC_SEEDS[split],
            num_classes=info.num_classes, image_shape=info.image_shape,
        )
    directory = default_data_dir(name, data_dir)
    if name in ("fashion-mnist", "mnist"):
        return _load_idx(info, directory, split)
    if name == "cifar10":
        return _load_cifar(info, directory, _CIFAR10_FILES[split], b"labels")
    if name == "cifar100":
        return _load_cifar(info, directory, _CIFAR100_FILES[split], b"fine_labels")
    if name == "svhn":
        return _load_svhn(info, directory / _SVHN_FILES[split])
    raise DataError(f"{name!r}: no loader for this dataset")  # pragma: no cover


def _to_float_images(arr: np.ndarray) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [0, 1] (one copy, done in place afterwards)."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return x.div_(255.0)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int, low: int = 0) -> None:
    if labels.size and (labels.min() < low or labels.max() >= num_classes + low):
        bad = labels[(labels < low) | (labels >= num_classes + low)][0]
        raise DataError(
            f"{path}: label {int(bad)} out of range, expected {low}..{num_classes + low - 1}"
        )


# IDX (MNIST, Fashion-MNIST) -------------------------------------------------------

_IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim


def _find_idx_file(directory: Path, base: str) -> Path:
    for candidate in (directory / base, directory / (base + ".gz")):
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


def _load_idx(info: DatasetInfo, directory: Path, split: str) -> TensorData:
    images_name, labels_name = _IDX_FILES[split]
    images_path = _find_idx_file(directory, images_name)
    labels_path = _find_idx_file(directory, labels_name)
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, "uint8 images")
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, "uint8 labels")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path.name} has "
            f"{images.shape[0]} images, expected equal counts"
        )
    _check_labels(labels_path, labels, info.num_classes)
    n, h, w = images.shape
    if (1, h, w) != info.image_shape:
        info = dataclasses.replace(info, image_shape=(1, h, w))
    x = _to_float_images(images.reshape(n, 1, h, w))
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorData(x, y, info)


# CIFAR pickles -------------------------------------------------------------------


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


def _load_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
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
    _check_labels(path, labels, num_classes)
    return data, labels.astype(np.int64)


def _load_cifar(info: DatasetInfo, directory: Path, files: tuple[str, ...], label_key: bytes) -> TensorData:
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise DataError(
            f"{directory / missing[0]}: missing {info.name} batch file(s) {', '.join(missing)} in {directory}"
        )
    parts = [_load_cifar_batch(directory / f, label_key, info.num_classes) for f in files]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    # Rows are the R, G, B planes of 32 x 32 each, row-major.
    x = _to_float_images(data.reshape(-1, 3, 32, 32))
    return TensorData(x, torch.from_numpy(labels), info)


# SVHN .mat ------------------------------------------------------------------------


def _load_svhn(info: DatasetInfo, path: Path) -> TensorData:
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
    _check_labels(path, y, 10, low=1)
    labels = y.astype(np.int64) % 10  # SVHN stores digit 0 as label 10
    # X is indexed [h, w, c, i]; we want [i, c, h, w].
    x = _to_float_images(X.transpose(3, 2, 0, 1))
    return TensorData(x, torch.from_numpy(labels), info)


# Synthetic ------------------------------------------------------------------------

_SYNTHETIC_SIZES = {"train": 2048, "test": 512}
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}
_TEMPLATE_SEED = 20230601  # templates are shared by all splits; only samples depend on `seed`


def _synthetic_templates(num_classes: int, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """One fixed smooth random pattern per class, values in [0, 1]."""
    c, h, w = image_shape
    g = torch.Generator().manual_seed(_TEMPLATE_SEED)
    coarse = torch.rand(num_classes, c, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    lo = up.amin(dim=(1, 2, 3), keepdim=True)
    hi = up.amax(dim=(1, 2, 3), keepdim=True)
    return (up - lo) / (hi - lo).clamp_min(1e-6)


def synthetic_data(
    n: int, seed: int = 0, num_classes: int = 10, image_shape: tuple[int, int, int] = (1, 28, 28)
) -> TensorData:
    """A deterministic, learnable toy dataset for tests and smoke runs.

    Each class has a fixed low-frequency template (independent of ``seed``, so different
    seeds give train/test samples of the same distribution); an example is
    ``clip(a * template[y] + noise, 0, 1)`` with a random contrast ``a`` and strong pixel
    noise, so single pixels are unreliable but the whole image identifies the class.
    Labels are balanced (every class appears when ``n >= num_classes``).
    """
    if n < 0 or num_classes < 1:
        raise DataError(f"synthetic: need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    image_shape = tuple(int(s) for s in image_shape)
    templates = _synthetic_templates(num_classes, image_shape)
    g = torch.Generator().manual_seed(int(seed))
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    a = 0.5 + torch.rand(n, 1, 1, 1, generator=g)  # contrast in [0.5, 1.5)
    noise = 0.35 * torch.randn(n, *image_shape, generator=g)
    x = (templates[y] * a + noise).clamp_(0.0, 1.0)
    base = DATASETS["synthetic"]
    c = image_shape[0]
    info = dataclasses.replace(
        base,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=base.mean[:1] * c,
        std=base.std[:1] * c,
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
    )
    return TensorData(x.float(), y.long(), info)
