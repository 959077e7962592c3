"""Data larger than memory: examples decoded from their files batch by batch.

:class:`StreamedData` stands where a :class:`~ratkit.data.tensordata.TensorData` would, for a
training split too large to hold: it keeps the labels (known without decoding, e.g. from an
image folder's scan) and a map-style dataset that decodes one example, and
:func:`iterate_streamed_batches` yields exactly the batches that
:func:`~ratkit.data.tensordata.iterate_batches` would yield for the same data in memory: the
same order (:func:`~ratkit.data.tensordata.epoch_order`, which both follow), the same float32
values. Only where the pixels come from differs, a :class:`torch.utils.data.DataLoader` with
``num_workers`` processes decoding whole batches, so switching between the two never changes a run.

:func:`fits_in_memory` tells which of the two a dataset needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import DataError
from .tensordata import TensorData, epoch_order, uint8_to_float

if TYPE_CHECKING:
    from .info import DatasetInfo

__all__ = ["StreamedData", "available_memory", "fits_in_memory", "iterate_streamed_batches"]


@dataclass(eq=False)
class StreamedData:
    """A dataset whose images stay in their files: ``dataset[i]`` decodes ``(uint8 C x H x W, label)``.

    ``labels`` are the int64 labels of every item of ``dataset`` (default: ``dataset.labels``,
    which :class:`~ratkit.data.formats.folder.FolderImages` has); ``indices`` the items this
    object covers, in order (default: all), so that :meth:`subset` and :meth:`first` select
    without decoding. ``device`` is where batches are delivered (:meth:`to`); decoding always
    happens on the CPU. A label in ``dataset[i]`` is not used: ``labels`` is the truth.

    Example::

        images = FolderImages(scan_folder(Path("flowers"), "train"), image_size=(64, 64))
        train = StreamedData(info, images).to("cuda")
        for x, y in iterate_streamed_batches(train, 128, shuffle=True, generator=g, num_workers=4): ...
    """

    info: DatasetInfo
    dataset: torch.utils.data.Dataset
    labels: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = getattr(self.dataset, "labels", None)
            if self.labels is None:
                raise DataError(f"{self.info.name}: StreamedData needs labels: the dataset has no .labels")
        self.labels = torch.as_tensor(self.labels).long().cpu()
        if self.labels.dim() != 1 or len(self.labels) != len(self.dataset):
            raise DataError(
                f"{self.info.name}: expected one label per item of the dataset ({len(self.dataset)}), "
                f"got labels of shape {tuple(self.labels.shape)}"
            )
        if self.indices is None:
            self.indices = torch.arange(len(self.dataset))
        self.indices = torch.as_tensor(self.indices).long().cpu()
        self.device = torch.device(self.device)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def y(self) -> torch.Tensor:
        """The int64 labels of the covered examples, on ``device``, without decoding anything."""
        return self.labels[self.indices].to(self.device)

    def subset(self, index_or_slice) -> StreamedData:
        """Examples selected by a slice, an index tensor/list or a boolean mask (as ``TensorData.subset``).

        A plain int selects a one-example subset."""
        if isinstance(index_or_slice, int):
            index_or_slice = slice(index_or_slice, index_or_slice + 1 if index_or_slice != -1 else None)
        elif not isinstance(index_or_slice, slice):
            index_or_slice = torch.as_tensor(index_or_slice).cpu()
        indices = self.indices[index_or_slice]
        return StreamedData(self.info, self.dataset, self.labels, indices, self.device)

    def first(self, n: int) -> StreamedData:
        """The first ``n`` examples (all of them if ``n`` exceeds the length)."""
        return self.subset(slice(0, max(0, min(int(n), len(self)))))

    def to(self, device: torch.device | str) -> StreamedData:
        """The same examples, delivered on ``device`` (pinned and copied per batch)."""
        return StreamedData(self.info, self.dataset, self.labels, self.indices, torch.device(device))

    def load(self, num_workers: int = 0, batch_size: int = 256) -> TensorData:
        """Decode every covered example into memory: a uint8 :class:`TensorData` on ``device``
        (the validation split, which is evaluated many times, is worth holding).

        Example: ``val = streamed.subset(val_idx).load()``"""
        parts = _decoded(self, _epoch_batches(self.info.name, len(self), batch_size), num_workers, pin=False)
        x = None
        start = 0
        for images in parts:
            if x is None:  # the size of the decoded images, whatever info says
                x = torch.empty((len(self), *images.shape[1:]), dtype=torch.uint8)
            x[start:start + len(images)] = images
            start += len(images)
        if x is None:
            x = torch.empty((0, *self.info.image_shape), dtype=torch.uint8)
        return TensorData(x, self.labels[self.indices].clone(), self.info).to(self.device)


def _epoch_batches(name: str, n: int, batch_size: int, *, shuffle: bool = False,
                   generator: torch.Generator | None = None, drop_last: bool = False,
                   start_batch: int = 0) -> list[torch.Tensor]:
    """Positions (0..n-1) of each batch of the epoch :func:`~ratkit.data.tensordata.epoch_order` gives."""
    order, starts = epoch_order(name, n, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                                start_batch=start_batch)
    positions = torch.arange(n) if order is None else order.cpu()
    return [positions[s:min(s + batch_size, n)] for s in starts]


class _BatchDecoder(torch.utils.data.Dataset):
    """Item k of this dataset is a whole batch: the stacked uint8 images of a list of item ids.

    A DataError is returned as its message, not raised: raised in a worker process, it would
    come back wrapped in a traceback; the main process raises it again, one line as ever."""

    def __init__(self, dataset: torch.utils.data.Dataset, name: str) -> None:
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, ids: list[int]) -> torch.Tensor | str:
        try:
            images = [self.dataset[i][0] for i in ids]
        except DataError as e:
            return str(e)
        for i, image in zip(ids, images):
            if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
                what = f"{image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) \
                    else type(image).__name__
                return f"{self.name}: item {i} is a {what}, expected a uint8 tensor C x H x W"
            if image.shape != images[0].shape:
                return (f"{self.name}: item {i} has shape {tuple(image.shape)} but item {ids[0]} has "
                        f"{tuple(images[0].shape)}, expected one size")
        return torch.stack(images)


def _decoded(data: StreamedData, batches: list[torch.Tensor], num_workers: int,
             pin: bool) -> Iterator[torch.Tensor]:
    """The uint8 images of each batch of positions (into ``data.indices``), decoded by a DataLoader."""
    if num_workers < 0:
        raise DataError(f"{data.info.name}: num_workers must be >= 0, got {num_workers}")
    ids = [data.indices[b].tolist() for b in batches]
    loader = torch.utils.data.DataLoader(
        _BatchDecoder(data.dataset, data.info.name),
        batch_size=None,  # an item is already a batch
        sampler=ids,
        num_workers=num_workers,
        pin_memory=pin,
        # The loader draws a seed for its workers; from its own generator, not the global one.
        generator=torch.Generator().manual_seed(0),
    )
    for images in loader:
        if isinstance(images, str):
            raise DataError(images)
        yield images


def iterate_streamed_batches(
    data: StreamedData,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    start_batch: int = 0,
    num_workers: int = 0,
    rows=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x float32 in [0, 1], y int64)`` batches of ``data``, decoded as they are needed.

    The arguments mean what they mean for :func:`~ratkit.data.tensordata.iterate_batches`, and
    the batches are the same, bit for bit, as those of ``data.load()`` there: one
    ``torch.randperm(len(data), generator=generator)`` on the generator's device, cut into
    batches, ``start_batch`` of them skipped undecoded. ``num_workers`` processes decode ahead
    (0: in this process); the global random state is not touched. ``rows``: a function of a
    batch's length giving the slice of it to decode and yield (a rank's share under torchrun, so
    each rank reads only its files); None: the whole batch.

    Example: ``for x, y in iterate_streamed_batches(train, 128, shuffle=True, generator=g, num_workers=4): ...``
    """
    batches = _epoch_batches(data.info.name, len(data), batch_size, shuffle=shuffle, generator=generator,
                             drop_last=drop_last, start_batch=start_batch)
    if rows is not None:
        batches = [b[rows(len(b))] for b in batches]
    on_gpu = data.device.type == "cuda"
    for positions, images in zip(batches, _decoded(data, batches, num_workers, pin=on_gpu)):
        y = data.labels[data.indices[positions]]
        yield uint8_to_float(images.to(data.device, non_blocking=on_gpu)), y.to(data.device)


# ------------------------------------------------------------------------------- memory


def _cgroup_room(cgroup_root: Path, proc_self_cgroup: Path) -> int | None:
    """Bytes this process's cgroup (v2) may still allocate, the tightest limit up the tree; None if unlimited."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    paths = [line[3:] for line in lines if line.startswith("0::")]
    if not paths:
        return None
    room = None
    group = cgroup_root / paths[0].lstrip("/")
    while True:
        try:
            limit = (group / "memory.max").read_text().strip()
            if limit != "max":
                free = int(limit) - int((group / "memory.current").read_text().strip())
                room = free if room is None else min(room, free)
        except (OSError, ValueError):
            pass
        if group == cgroup_root or cgroup_root not in group.parents:
            return None if room is None else max(room, 0)
        group = group.parent


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                     proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes of physical memory a new allocation can take now, or None when unknown.

    The kernel's ``MemAvailable`` (free memory plus the page cache it can drop), else
    ``os.sysconf("SC_AVPHYS_PAGES")`` pages (free memory only); bounded by what the process's
    cgroup v2 (a SLURM job, a container) has left below its ``memory.max``, since that is where
    it would be killed.
    """
    total = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                total = int(line.split()[1]) * 1024  # reported in kB
                break
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        try:
            total = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            total = None
    room = _cgroup_room(cgroup_root, proc_self_cgroup)
    if room is not None:
        total = room if total is None else min(total, room)
    return total if total is None or total > 0 else None


def fits_in_memory(n: int, shape: tuple[int, ...], dtype: torch.dtype | np.dtype = torch.uint8,
                   fraction: float = 0.5) -> bool:
    """Whether ``n`` examples of ``shape`` (C, H, W) in ``dtype`` take at most ``fraction`` of the
    available memory (:func:`available_memory`); True when that is unknown.

    Example: ``fits_in_memory(len(index), (3, 64, 64))`` decides between loading and streaming.
    """
    itemsize = dtype.itemsize if isinstance(dtype, torch.dtype) else np.dtype(dtype).itemsize
    needed = int(n) * math.prod(int(s) for s in shape) * itemsize
    available = available_memory()
    return available is None or needed <= fraction * available
