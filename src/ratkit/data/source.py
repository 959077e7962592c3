"""The front door of every dataset: :class:`DataSource`, which names a run's data, built-in or the
user's own (image folders, npz files), and what every command reads through it.

A built-in dataset is known by name (its facts are in the registry); a folder or npz dataset
is known only from its files and from what the user says about it: the threat model
(``eps``), the channels, an image size to resize to. :class:`DataSource` holds all of it, and
:func:`source_info` turns it into the same :class:`~ratkit.data.info.DatasetInfo` the
built-ins have, so the trainer, ``rat eval`` and the analysis tools treat both alike.

The per-channel mean and std of a file dataset are computed once from its training split
(:func:`with_statistics`) and then recorded in the run, so every later command normalises
identically without reading the training split again.

Example::

    src = with_statistics(DataSource("folder", data_dir="my-images", eps=8 / 255))
    info = source_info(src)            # classes from the sub-folders, shape from the images
    train = load_split(src, "train")   # uint8 in memory, or streamed from the files
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError
from .info import SPLITS, DatasetInfo, no_radius_message

__all__ = ["FILE_DATASETS", "GIVEN", "LABELS", "DataSource", "channel_statistics", "check_class_count", "check_split",
           "default_crop_padding", "default_val_size", "load_split", "source_info", "training_labels",
           "with_statistics"]

FILE_DATASETS = ("folder", "npz")  # datasets read from a user's files; their facts come from the files
GIVEN = "python"  # data handed over in Python (ratkit.fit): no files, facts recorded in the run
LABELS = ("as-is", "remap")  # data.labels: npz labels as they are, or the labels present renumbered 0..C-1


@dataclass(frozen=True)
class DataSource:
    """Which data a run uses and how to read it: the ``data:`` section of a run's config, less the
    trainer's own settings (the validation hold-out, the subset, augmentation on or off).

    ``eps``: the threat radius (Linf, or L2 under an L2 attack) for training, validation and the
    final evaluation; required for file datasets, optional for the built-ins (their protocol's).
    ``channels`` forces 1 or 3 channels; ``image_size`` (H, W) resizes; ``mean``/``std`` are the
    per-channel statistics (None: computed from the training split); ``hflip``/``crop_padding``
    None: the dataset's default (file datasets: no flip, padding H // 8). ``num_classes`` and
    ``image_shape`` describe data given from Python. ``labels="remap"``: an npz dataset's training
    labels present, sorted, become classes 0..C-1 (``label_map[k]`` is class k's label in the files;
    None: found in train.npz), where ``"as-is"`` refuses labels that skip numbers.
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    eps: float | None = None
    channels: int | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    hflip: bool | None = None
    crop_padding: int | None = None
    num_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None
    stream: bool | None = None
    workers: int = 2
    labels: str = "as-is"
    label_map: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, data, **extra) -> "DataSource":
        """The source of a run's ``data:`` section (a :class:`ratkit.config.DataConfig`): every field
        the two share, taken by name (a list as a tuple), so a field added to both needs no third
        edit; ``extra`` sets fields besides.

        Example: ``DataSource.from_config(load_config("fmnist-cpu").data).dataset`` is ``"fashion-mnist"``."""
        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(data)}
        values = {name: getattr(data, name) for name in shared} | extra
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @property
    def from_files(self) -> bool:
        return self.dataset in FILE_DATASETS


def default_crop_padding(height: int) -> int:
    """Random-crop padding of a file dataset: an eighth of the height (4 for 32 px, 3 for 28 px)."""
    return max(1, int(height) // 8)


def _directory(src: DataSource) -> Path:
    base = src.data_dir or os.environ.get("RAT_DATA_DIR")
    if not base:
        raise DataError(f"{src.dataset}: no data directory; pass --data-dir DIR (data.data_dir)")
    path = Path(base).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: data directory of the {src.dataset} dataset does not exist or is not a directory")
    return path


def _folder_channels(src: DataSource, index) -> int:
    return int(src.channels) if src.channels is not None else int(index.mode_channels)


def _folder_shape(src: DataSource, index) -> tuple[int, int]:
    if src.image_size is not None:
        return int(src.image_size[0]), int(src.image_size[1])
    if index.size is None:
        raise DataError(f"{index.first_differing}: its size differs from {index.files[0]}'s; set "
                        "data.image_size: [H, W] to resize every image (Pillow bilinear)")
    return int(index.size[0]), int(index.size[1])


def _scan(src: DataSource):
    """(train index, test index) of a folder dataset, with the same classes in both."""
    from .formats.folder import check_same_classes, scan_folder

    directory = _directory(src)
    train, test = scan_folder(directory, "train"), scan_folder(directory, "test")
    check_same_classes(train, test, directory)
    return train, test


def _npz_facts(src: DataSource, train: tuple | None = None) -> tuple[int, tuple[int, int, int], tuple[str, ...]]:
    """(classes, image shape, class names) of an npz dataset, from its training arrays (``train``:
    already loaded, else read here). With ``src.labels == "remap"`` the classes are the training
    labels present, sorted (``label_map``), named as the files name them."""
    from .formats.npz import check_label_range, load_npz_split, npz_class_names, npz_num_classes

    x, y = train if train is not None else load_npz_split(_directory(src), "train")
    given = npz_class_names(_directory(src))
    num_classes = npz_num_classes(y, given)
    names = given or tuple(f"class_{i}" for i in range(num_classes))
    shape = tuple(int(d) for d in x.shape[1:])
    if src.labels != "remap":
        return num_classes, shape, tuple(names)
    check_label_range(_directory(src) / "train.npz", y, num_classes)  # a classes array names every label
    kept = _label_map(src, y)
    return len(kept), shape, tuple(names[label] for label in kept)


def _label_map(src: DataSource, train_y: torch.Tensor) -> tuple[int, ...]:
    """The npz labels of classes 0..C-1 under ``data.labels=remap``: the recorded map, else the
    training labels present, sorted."""
    if src.label_map is not None:
        return tuple(int(v) for v in src.label_map)
    return tuple(int(v) for v in torch.unique(train_y).tolist())


def _listed(values, most: int = 12) -> str:
    values = [str(v) for v in values]
    return ", ".join(values) if len(values) <= most else ", ".join(values[:most]) + f", ... ({len(values)} in all)"


def _check_no_skipped_labels(path: Path, y: torch.Tensor, num_classes: int) -> None:
    """One line naming the labels found when some of 0..num_classes-1 have no training image: a
    12-class problem with 8 empty classes is not what labels 3, 7, 9, 11 meant."""
    present = torch.unique(y).tolist()
    missing = sorted(set(range(num_classes)) - set(present))
    if not missing:
        return  # labels beyond a classes array are check_label_range's
    raise DataError(f"{path}: the training labels are {_listed(present)}, so classes {_listed(missing)} of "
                    f"0..{num_classes - 1} have no training image; renumber them 0..{len(present) - 1}, or set "
                    f"data.labels=remap to train on the {len(present)} labels present (the mapping is recorded)")


def _remapped_labels(path: Path, y: torch.Tensor, kept: tuple[int, ...]) -> torch.Tensor:
    """``y`` (labels as in the files) as classes 0..C-1 of ``kept``; a label outside it is refused."""
    unknown = sorted(set(torch.unique(y).tolist()) - set(kept))
    if unknown:
        raise DataError(f"{path}: label {unknown[0]} is not among the training labels {_listed(kept)} "
                        "(data.labels=remap)")
    table = torch.zeros(max(kept) + 1, dtype=torch.int64)
    table[torch.tensor(kept, dtype=torch.int64)] = torch.arange(len(kept))
    return table[y]


def training_labels(src: DataSource) -> tuple[int, tuple[int, ...]]:
    """(training images, the sorted labels present) of your own files, read once when a run starts;
    one line for npz labels that skip numbers (unless ``labels="remap"``) or fewer than 2 classes.
    Asked of new runs only: a run trained before the check keeps evaluating and resuming."""
    if src.dataset == "folder":
        labels = torch.tensor(_scan(src)[0].labels)  # a copy: the index keeps its array read-only
    else:
        from .formats.npz import load_npz_split, npz_class_names, npz_num_classes

        labels = load_npz_split(_directory(src), "train")[1]
        if src.labels != "remap":
            num_classes = npz_num_classes(labels, npz_class_names(_directory(src)))
            _check_no_skipped_labels(_directory(src) / "train.npz", labels, num_classes)
    present = tuple(int(v) for v in torch.unique(labels).tolist())
    check_class_count(src.data_dir or src.dataset, len(present))
    return len(labels), present


BUILT_IN_VAL_SIZE = 5000  # the validation hold-out of a built-in dataset, and the most of your own data's


def default_val_size(dataset: str, n: int | None) -> int:
    """The validation hold-out where ``data.val_size`` is not set: a tenth of your own ``n`` training
    images, at most 5,000, so that a small dataset keeps most of them for training; a built-in
    dataset's 5,000, as before (recorded runs stay the same).

    Example: ``default_val_size("npz", 90)`` is 9."""
    if dataset not in (*FILE_DATASETS, GIVEN):
        return BUILT_IN_VAL_SIZE
    return min(BUILT_IN_VAL_SIZE, int(n) // 10)


def check_class_count(where: str, num_classes: int) -> None:
    """One line unless there are at least 2 classes: no method trains, and no attack means
    anything, on one (PGD-AT would report 100% robust accuracy)."""
    if num_classes < 2:
        raise DataError(f"{where}: {num_classes} class{'' if num_classes == 1 else 'es'} in the training data; "
                        "adversarial training needs at least 2")


def _folder_facts(src: DataSource, train) -> tuple[int, tuple[int, int, int], tuple[str, ...]]:
    """(classes, image shape, class names) of a folder dataset from its scanned training split."""
    h, w = _folder_shape(src, train)
    return len(train.classes), (_folder_channels(src, train), h, w), tuple(train.classes)


def _own_info(src: DataSource, num_classes: int, shape: tuple[int, ...], names: tuple[str, ...],
              require_eps: bool = True) -> DatasetInfo:
    """The facts of a dataset of your own (files, or data given from Python) as a DatasetInfo."""
    check_class_count(src.data_dir or src.dataset, num_classes)
    if src.eps is None and require_eps:
        raise DataError(no_radius_message(src.dataset))
    c = shape[0]
    mean = tuple(src.mean) if src.mean is not None else (0.5,) * c
    std = tuple(src.std) if src.std is not None else (0.25,) * c
    if len(mean) != c or len(std) != c:
        raise DataError(f"{src.dataset}: data.mean/data.std have {len(mean)}/{len(std)} values for {c} channels")
    return DatasetInfo(name=src.dataset, num_classes=num_classes, image_shape=tuple(shape), mean=mean, std=std,
                       linf_eps=float(src.eps or 0.0), l2_eps=float(src.eps or 0.0), hflip=bool(src.hflip),
                       crop_padding=default_crop_padding(shape[1]) if src.crop_padding is None
                       else int(src.crop_padding), class_names=names)


def source_info(src: DataSource, require_eps: bool = True) -> DatasetInfo:
    """The facts of ``src``'s dataset: the registry's entry for a built-in one (with ``eps``,
    ``hflip``, ``crop_padding`` as given); for a file dataset, the classes and image shape read
    from its files, the recorded statistics and the given eps.

    Example: ``source_info(DataSource("cifar10")).linf_eps`` is 8/255."""
    from .datasets import dataset_info

    if src.dataset == "folder":
        return _own_info(src, *_folder_facts(src, _scan(src)[0]), require_eps=require_eps)
    if src.dataset == "npz":
        return _own_info(src, *_npz_facts(src), require_eps=require_eps)
    if src.dataset == GIVEN:
        if src.num_classes is None or src.image_shape is None:
            raise DataError("python: data given from Python records num_classes and image_shape")
        num_classes = int(src.num_classes)
        return _own_info(src, num_classes, tuple(int(d) for d in src.image_shape),
                         tuple(f"class_{i}" for i in range(num_classes)), require_eps=require_eps)
    info = dataset_info(src.dataset)
    changes = {}
    if src.eps is not None:
        changes.update(linf_eps=float(src.eps), l2_eps=float(src.eps))
    if src.hflip is not None:
        changes["hflip"] = bool(src.hflip)
    if src.crop_padding is not None:
        changes["crop_padding"] = int(src.crop_padding)
    return dataclasses.replace(info, **changes) if changes else info


def channel_statistics(batches) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images in [0, 1] (``batches``: N x C x H x W tensors, uint8 or
    float), accumulated in float64 so the result does not depend on how the data is batched."""
    total = squares = None
    count = 0
    for xb in batches:
        x = xb.double() / 255.0 if xb.dtype == torch.uint8 else xb.double()
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise DataError("cannot compute the statistics of an empty training split")
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel: no division by 0
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def with_statistics(src: DataSource) -> DataSource:
    """``src`` with ``mean``/``std`` filled in from the training split when they are not given
    (file datasets only; a built-in dataset's are its registry entry's)."""
    if not src.from_files or (src.mean is not None and src.std is not None):
        return src
    from .streaming import StreamedData, iterate_streamed_batches

    train = load_split(src, "train")
    if isinstance(train, StreamedData):  # decoded once, in worker processes, never held whole
        mean, std = channel_statistics(x for x, _ in iterate_streamed_batches(train, 256, shuffle=False,
                                                                            num_workers=src.workers))
    else:
        mean, std = channel_statistics(train.x[i:i + 1024] for i in range(0, len(train), 1024))
    return dataclasses.replace(src, mean=mean, std=std)


def _should_stream(src: DataSource, n: int, shape: tuple[int, int, int]) -> bool:
    from .streaming import fits_in_memory

    if src.stream is not None:
        return bool(src.stream)
    return not fits_in_memory(n, shape)


def load_split(src: DataSource, split: str, *, stream: bool | None = None):
    """Split ``"train"`` or ``"test"`` of ``src``: a :class:`~ratkit.data.TensorData` (uint8 for
    file datasets: a quarter of float32's memory) or, for a folder that does not fit in memory or
    with ``data.stream: true``, a :class:`~ratkit.data.streaming.StreamedData` decoding its files
    in worker processes. ``stream`` overrides ``src.stream``.

    Example: ``test = load_split(src, "test")``"""
    from .datasets import load_dataset
    from .tensordata import TensorData

    if split not in SPLITS:
        raise DataError(f"{src.dataset}: unknown split {split!r}, expected 'train' or 'test'")
    if src.dataset == GIVEN:
        raise DataError("python: this run's data was given from Python (ratkit.fit); name files to evaluate on "
                        "with --dataset folder|npz --data-dir DIR")
    if not src.from_files:
        data = load_dataset(src.dataset, split, data_dir=src.data_dir)
        info = source_info(src)
        return data if info == data.info else TensorData(data.x, data.y, info)
    if src.dataset == "npz":
        from .formats.npz import check_label_range, load_npz_split

        if stream or (stream is None and src.stream):
            raise DataError("npz: an npz file is read whole; streaming (data.stream) is for folder datasets")
        x, y = load_npz_split(_directory(src), split)
        info = _own_info(src, *_npz_facts(src, (x, y) if split == "train" else None))  # train.npz read once
        if src.labels == "remap":  # the classes are the training labels present, in order
            train_y = y if split == "train" or src.label_map is not None else load_npz_split(_directory(src),
                                                                                              "train")[1]
            y = _remapped_labels(_directory(src) / f"{split}.npz", y, _label_map(src, train_y))
        if tuple(x.shape[1:]) != info.image_shape:
            raise DataError(f"{_directory(src) / (split + '.npz')}: images of shape {tuple(x.shape[1:])}, "
                            f"train.npz has {info.image_shape}")
        check_label_range(_directory(src) / f"{split}.npz", y.numpy(), info.num_classes)
        return TensorData(x, y, info)
    from .formats.folder import FolderImages, load_folder_index
    from .streaming import StreamedData

    train, test = _scan(src)  # once: the facts and the files both come from this scan
    info = _own_info(src, *_folder_facts(src, train))
    index = train if split == "train" else test
    channels, size = info.image_shape[0], info.image_shape[1:]
    image_size = tuple(src.image_size) if src.image_size is not None else None
    _check_folder_size(src, index, size, split)
    if _should_stream(src, len(index.files), info.image_shape) if stream is None else stream:
        return StreamedData(info, FolderImages(index, channels, image_size or tuple(size)))
    x, y, _ = load_folder_index(index, _directory(src), channels=channels, image_size=image_size or tuple(size))
    data = TensorData(x, y, info)
    if split == "test":  # files come class by class: a fixed shuffle makes "the first n" every class's
        data = data.subset(test_order(len(data)))
    return data


def _check_folder_size(src: DataSource, index, size: tuple[int, int], split: str) -> None:
    """A DataError when the scanned images of ``split`` (``index``) are not of the training images'
    ``size`` (H, W) and data.image_size does not resize them all."""
    if src.image_size is None and index.size is not None and tuple(index.size) != tuple(size):
        raise DataError(f"{index.files[0]}: {split} images are {tuple(index.size)}, train images {tuple(size)}; "
                        "set data.image_size: [H, W] to resize both")


def check_split(src: DataSource, split: str = "test") -> None:
    """Raise now the one-line DataError that reading ``split`` of a file dataset would raise later
    (the test split, read only by the evaluation after training): an npz file is read and checked
    as :func:`load_split` reads it (a missing file, NaN, labels outside the training classes,
    lengths that differ, another image shape); a folder's scanned headers are compared (images of
    another size), nothing is decoded. Built-in data and data given from Python: nothing to check.

    Example: ``check_split(DataSource("npz", data_dir="arrays", eps=0.03))``"""
    if src.dataset == "npz":
        load_split(src, split)
    elif src.dataset == "folder":
        train, test = _scan(src)
        index = train if split == "train" else test
        _folder_shape(src, index)  # one size, or data.image_size resizing them all
        _check_folder_size(src, index, _folder_shape(src, train), split)


def test_order(n: int) -> torch.Tensor:
    """The order of a folder's test images: one fixed permutation (seed 0) of the class-by-class
    file order, the same on every machine, so that the protocol's "first n" (AutoAttack on a
    subset) is not the first classes alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))



def data_fingerprint(data) -> dict:
    """What identifies a split's data, cheap enough for every start: the number of examples, the
    labels' counts, and a SHA-256 of the images and labels (in memory) or of the files' names
    relative to the data directory and their sizes (streamed: nothing is decoded). Moving the same
    files elsewhere keeps the fingerprint; other images change it.

    Example: ``data_fingerprint(load_split(src, "train"))["n"]``"""
    import hashlib

    from .streaming import StreamedData

    digest = hashlib.sha256()
    y = data.y.cpu()
    if isinstance(data, StreamedData):
        files = data.dataset.files
        root = Path(os.path.commonpath([str(f) for f in files])) if files else Path(".")
        for i in data.indices.tolist():
            f = Path(files[i])
            digest.update(f"{f.relative_to(root)}:{f.stat().st_size}\n".encode())
        kind = "file names and sizes"
    else:
        x = data.x.cpu().contiguous()
        digest.update(x.numpy().tobytes() if x.dtype != torch.bfloat16 else x.float().numpy().tobytes())
        kind = "images"
    digest.update(y.numpy().tobytes())
    counts = torch.bincount(y).tolist() if len(y) else []
    return {"n": int(len(y)), "label_counts": counts, "sha256": digest.hexdigest(), "of": kind}


def fingerprint_difference(recorded: dict, now: dict, split: str) -> str | None:
    """A one-line description of how a split's data differ from the recorded fingerprint, or None."""
    if recorded.get("sha256") == now.get("sha256"):
        return None
    if recorded.get("n") != now.get("n"):
        return f"the {split} split has {now.get('n')} examples, the run's had {recorded.get('n')}"
    if recorded.get("label_counts") != now.get("label_counts"):
        return f"the {split} split's labels differ (per class {now.get('label_counts')}, the run's {recorded.get('label_counts')})"
    return f"the {split} split's {now.get('of', 'images')} differ from the run's (same count and labels)"
