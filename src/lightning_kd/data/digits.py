"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no download needed."""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsDataModule"]


class DigitsDataModule(L.LightningDataModule):
    """The digits set, split into train / val / test by a fixed seed and scaled to [0, 1].

    Batches are ``(x, y)`` with ``x`` of shape ``[B, 1, 8, 8]`` (float32) and ``y`` class indices.

    Args:
        batch_size: Samples per batch.
        val_fraction: Fraction of the data held out for validation.
        test_fraction: Fraction of the data held out for testing.
        train_size: Keep only the first ``train_size`` training samples (``None``: all of them),
            to study distillation with little labeled data.
        split_seed: Seed of the split; independent of the training seed, so every run of a
            sweep sees the same split.

    Example:
        >>> data = DigitsDataModule(batch_size=32)
        >>> data.setup()
        >>> len(data.train_set), len(data.val_set), len(data.test_set)
        (1259, 269, 269)
    """

    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        train_size: Optional[int] = None,
        split_seed: int = 0,
    ):
        super().__init__()
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction and test_fraction must be > 0 with a sum < 1, got {val_fraction} and {test_fraction}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.train_size = train_size
        self.split_seed = split_seed
        self.train_set: Optional[TensorDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).reshape(-1, *self.input_shape) / 16.0
        y = torch.tensor(labels, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        n_val, n_test = int(len(y) * self.val_fraction), int(len(y) * self.test_fraction)
        val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
        if self.train_size is not None:
            if not 0 < self.train_size <= len(train):
                raise ValueError(f"train_size must be in [1, {len(train)}], got {self.train_size!r}")
            train = train[: self.train_size]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
