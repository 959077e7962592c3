"""In-memory datasets: :class:`TensorData` and how it is split and batched.

All datasets used here are small enough to hold as one float tensor, so a dataset is
``x`` float32 N x C x H x W in [0, 1] and ``y`` int64 N, and batching is plain tensor
indexing; no DataLoader workers, no per-sample Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import DataError

if TYPE_CHECKING:
    from .datasets import DatasetInfo

__all__ = ["TensorData", "iterate_batches", "split_train_val"]


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

    def to(self, device: torch.device | str) -> TensorData:
        """The same examples on ``device`` (the tensors themselves if they are there already): the
        trainer holds its data where it trains, so a step indexes its batch there, with no copy.

        Example: ``train_data = train_data.to("cuda")``"""
        return TensorData(self.x.to(device), self.y.to(device), self.info)

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
    device), so a seeded generator gives the same batches every run; the batches are indexed
    on the data's device, so a CPU generator gives the same order for data on a GPU.
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
