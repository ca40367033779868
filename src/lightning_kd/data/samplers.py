"""Batch samplers for in-memory tensor datasets."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["EpochBatchSampler"]


class EpochBatchSampler(Sampler[Tensor]):
    """Yields index tensors, one per batch, in an order that depends only on (seed, epoch).

    Lightning calls :meth:`set_epoch` at the start of every epoch, so a run resumed from a
    checkpoint at epoch ``k`` sees exactly the batches that an uninterrupted run sees from ``k``
    on, whatever happened to the global random state in between.

    Args:
        length: Number of samples.
        batch_size: Samples per batch (the last batch may be smaller).
        shuffle: Shuffle within each epoch.
        seed: Seed of the shuffling.

    Example:
        >>> sampler = EpochBatchSampler(5, batch_size=2, shuffle=False)
        >>> [batch.tolist() for batch in sampler]
        [[0, 1], [2, 3], [4]]
    """

    def __init__(self, length: int, batch_size: int, shuffle: bool = True, seed: int = 0):
        self.length = length
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        # Index tensors, not lists: a tensor dataset indexes with them without converting a list.
        yield from order.split(self.batch_size)

    def __len__(self) -> int:
        return (self.length + self.batch_size - 1) // self.batch_size
