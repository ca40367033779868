"""``TensorDataModule``: the shared machinery of the in-memory datasets."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd.checks import check_positive_int
from lightning_kd.data.indexed import IndexedDataset
from lightning_kd.data.samplers import EpochBatchSampler
from lightning_kd.losses import IGNORE_INDEX

__all__ = ["TensorDataModule"]


class TensorDataModule(L.LightningDataModule):
    """A dataset held in memory as tensors, with the options distillation experiments need.

    Subclasses set ``num_classes`` and ``input_shape`` and implement :meth:`load`, which returns
    the train pool, validation and test tensors. Batches are ``(x, y)``.

    Args:
        batch_size: Samples per batch.
        labeled_size: Keep the labels of only the first ``labeled_size`` training samples
            (``None``: all of them): little labeled data, as in semi-supervised distillation.
        include_unlabeled: Also train on the remaining training samples, with the label
            ``-100`` (ignored by the hard loss): a transfer set larger than the labeled set,
            for soft targets. Only a distillation run can learn from them.
        split_seed: Seed of the train/validation split, independent of the training seed, so
            every run of a sweep sees the same split.
        with_index: Training batches are dicts ``{"x", "y", "index"}`` (an
            :class:`~lightning_kd.data.IndexedDataset`), the keys of a teacher-output cache.
        augment: A random transform of a batch of inputs (e.g.
            :class:`~lightning_kd.data.RandomCropFlip`), applied to training batches only, on the
            device, after the transfer. The inputs then change between epochs, so teacher outputs
            cannot be cached.
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(
        self,
        batch_size: int = 64,
        labeled_size: Optional[int] = None,
        include_unlabeled: bool = False,
        split_seed: int = 0,
        with_index: bool = False,
        augment: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_positive_int("labeled_size", labeled_size, allow_none=True)
        self.batch_size = batch_size
        self.labeled_size = labeled_size
        self.include_unlabeled = include_unlabeled
        self.split_seed = split_seed
        self.with_index = with_index
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be a callable that takes a batch of inputs, got {augment!r}")
        self.augment = augment
        self.train_set: Optional[TensorDataset] = None

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return ``x_train, y_train, x_val, y_val, x_test, y_test``, the train pool shuffled."""
        raise NotImplementedError

    def split_generator(self) -> torch.Generator:
        """The generator that subclasses use to shuffle and split, seeded by ``split_seed``."""
        return torch.Generator().manual_seed(self.split_seed)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        x_train, y_train, x_val, y_val, x_test, y_test = self.load()
        if self.labeled_size is not None:
            if not 0 < self.labeled_size <= len(y_train):
                raise ValueError(f"labeled_size must be in [1, {len(y_train)}], got {self.labeled_size!r}")
            y_train = y_train.clone()
            y_train[self.labeled_size :] = IGNORE_INDEX
            if not self.include_unlabeled:
                x_train, y_train = x_train[: self.labeled_size], y_train[: self.labeled_size]
        self.train_set = TensorDataset(x_train, y_train)
        self.val_set = TensorDataset(x_val, y_val)
        self.test_set = TensorDataset(x_test, y_test)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.augment is None or self.trainer is None or not self.trainer.training:
            return batch
        if isinstance(batch, dict):
            return {**batch, "x": self.augment(batch["x"])}
        x, *rest = batch
        return (self.augment(x), *rest)

    def _loader(self, dataset: Union[TensorDataset, IndexedDataset], shuffle: bool) -> DataLoader:
        if self.trainer is not None and self.trainer.world_size > 1:
            if shuffle:  # training: Lightning inserts its DistributedSampler
                return DataLoader(dataset, batch_size=self.batch_size, shuffle=True)
            # Evaluation: each sample on exactly one rank. DistributedSampler would pad the last
            # ranks with repeated samples, and the metrics would count those twice.
            trainer = self.trainer
            sampler = UnrepeatedDistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=False)
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)
        # One process: index the tensors with a whole batch at once (no per-sample collation), in
        # an order set by the seed and the epoch, so that a resumed run sees the same batches.
        sampler = EpochBatchSampler(len(dataset), self.batch_size, shuffle=shuffle, seed=torch.initial_seed())
        return DataLoader(dataset, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(IndexedDataset(self.train_set) if self.with_index else self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
