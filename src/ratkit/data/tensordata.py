"""In-memory datasets: :class:`TensorData` and how it is split and batched.

A dataset that fits in memory is one tensor of images and one of labels, and batching is
plain tensor indexing; no DataLoader workers, no per-sample Python objects. The images are
float32 in [0, 1] (the built-in datasets) or uint8 0..255 (files a user brings: a quarter of
the memory), and every batch comes out as float32 in [0, 1] either way. Data larger than
memory is streamed from its files instead: :mod:`ratkit.data.streaming`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import DataError

if TYPE_CHECKING:
    from .info import DatasetInfo

__all__ = ["TensorData", "epoch_order", "iterate_batches", "split_train_val", "uint8_to_float"]

_LOOKUP: dict[torch.device, torch.Tensor] = {}  # the 256 float values of uint8 pixels, per device


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> a new float32 tensor in [0, 1], the same bits on every device.

    On the CPU this is ``x.float().div_(255.0)``, the very operation of
    ``formats.common.to_float_images``, so a uint8 dataset gives bit for bit the batches of
    the float32 dataset it replaces. CUDA divides by a CPU scalar as a multiplication by its
    reciprocal (ATen's div_true_kernel_cuda), which differs in the last bit for 126 of the
    256 values; on other devices the values are therefore looked up in a table computed on
    the CPU.

    Example: ``uint8_to_float(torch.tensor([0, 255], dtype=torch.uint8))`` is ``tensor([0., 1.])``.
    """
    if x.device.type == "cpu":
        return x.float().div_(255.0)
    return _float_table(x.device)[x.long()]


def _float_table(device: torch.device) -> torch.Tensor:
    """The float32 value of each uint8 pixel 0..255, computed on the CPU, held on ``device``."""
    table = _LOOKUP.get(device)
    if table is None:
        table = _LOOKUP[device] = torch.arange(256, dtype=torch.uint8).float().div_(255.0).to(device)
    return table


@dataclass
class TensorData:
    """An in-memory dataset: ``x`` N x C x H x W, ``y`` int64 N.

    ``x`` is floating point in [0, 1] or uint8 0..255; :func:`iterate_batches` yields float32
    in [0, 1] either way, so a model never sees the storage type. ``subset``, ``first`` and
    ``to`` keep it; :meth:`as_float` converts.

    Example: ``TensorData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), info)``
    """

    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"{self.info.name}: expected x of shape N x C x H x W and y of shape N, "
                f"got x {tuple(self.x.shape)} and y {tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.uint8 and not self.x.is_floating_point():
            raise DataError(
                f"{self.info.name}: x must be uint8 (0..255) or floating point (0..1), got {self.x.dtype}"
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

    def to(self, device: torch.device | str) -> TensorData:
        """The same examples on ``device`` (the tensors themselves if they are there already): the
        trainer holds its data where it trains, so a step indexes its batch there, with no copy.

        Example: ``train_data = train_data.to("cuda")``"""
        return TensorData(self.x.to(device), self.y.to(device), self.info)

    def first(self, n: int) -> TensorData:
        """The first ``n`` examples (all of them if ``n`` exceeds the length)."""
        return self.subset(slice(0, max(0, min(int(n), len(self)))))

    def as_float(self) -> TensorData:
        """The same examples with ``x`` float32 in [0, 1]: a converted copy of uint8 images
        (:func:`uint8_to_float`), ``self`` when ``x`` is floating point already.

        Example: ``evaluate(model, data.as_float().x, data.y, ...)`` for code that wants floats."""
        if self.x.is_floating_point():
            return self
        return TensorData(uint8_to_float(self.x), self.y, self.info)

    @property
    def nbytes(self) -> int:
        """Bytes held by ``x`` and ``y`` (uint8 images take a quarter of float32's)."""
        return self.x.element_size() * self.x.nelement() + self.y.element_size() * self.y.nelement()


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


def epoch_order(name: str, n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                drop_last: bool = False, start_batch: int = 0) -> tuple[torch.Tensor | None, range]:
    """The order of one epoch of ``n`` examples, which :func:`iterate_batches` and
    :func:`~ratkit.data.streaming.iterate_streamed_batches` both follow, so that data in memory and
    data streamed from files give the same batches bit for bit: the permutation (one
    ``torch.randperm(n)`` drawn from ``generator`` on the generator's device; None without
    ``shuffle``: the stored order) and the position where each batch still to come starts
    (``start_batch`` batches skipped, the permutation still drawn in full; with ``drop_last`` no
    short last batch). ``name`` names the data in the errors."""
    if batch_size <= 0:
        raise DataError(f"{name}: batch_size must be positive, got {batch_size}")
    if start_batch < 0:
        raise DataError(f"{name}: start_batch must be >= 0, got {start_batch}")
    order = None
    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device)
    stop = n - n % batch_size if drop_last else n
    return order, range(start_batch * batch_size, stop, batch_size)


def iterate_batches(
    data: TensorData,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    start_batch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches straight from the in-memory tensors.

    With ``shuffle`` the order is a ``randperm`` drawn from ``generator`` (on its own
    device), so a seeded generator gives the same batches every run; the batches are indexed
    on the data's device, so a CPU generator gives the same order for data on a GPU.
    uint8 images come out as float32 in [0, 1], converted per batch (:func:`uint8_to_float`);
    floating-point images come out as stored.

    ``start_batch`` skips the first batches of the epoch without indexing them (an epoch
    resumed after ``start_batch`` steps): the permutation is still drawn in full, so the
    remaining batches, and the generator's state afterwards, are those of the whole epoch.

    Example: ``for x, y in iterate_batches(train, 128, shuffle=True, generator=g, drop_last=True): ...``
    """
    n = len(data)
    order, starts = epoch_order(data.info.name, n, batch_size, shuffle=shuffle, generator=generator,
                                drop_last=drop_last, start_batch=start_batch)
    if order is not None:
        order = order.to(data.x.device)
    convert = uint8_to_float if data.x.dtype == torch.uint8 else (lambda x: x)
    for start in starts:
        end = min(start + batch_size, n)
        if order is None:
            yield convert(data.x[start:end]), data.y[start:end]
        else:
            idx = order[start:end]
            yield convert(data.x[idx]), data.y[idx]
