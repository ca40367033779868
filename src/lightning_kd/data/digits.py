"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no download needed."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_kd.checks import check_split_fractions
from lightning_kd.data.base import TensorDataModule

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorDataModule):
    """The digits set, split into train / val / test by a fixed seed and scaled to [0, 1].

    Batches are ``(x, y)`` with ``x`` of shape ``[B, 1, 8, 8]`` (float32) and ``y`` class indices.
    See :class:`~lightning_kd.data.base.TensorDataModule` for the shared arguments.

    Args:
        val_fraction: Fraction of the data held out for validation.
        test_fraction: Fraction of the data held out for testing.
        **kwargs: ``batch_size``, ``labeled_size``, ``include_unlabeled``, ``split_seed``.

    Example:
        >>> data = DigitsDataModule(batch_size=32)
        >>> data.setup()
        >>> len(data.train_set), len(data.val_set), len(data.test_set)
        (1259, 269, 269)
    """

    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, val_fraction: float = 0.15, test_fraction: float = 0.15, **kwargs):
        super().__init__(**kwargs)
        check_split_fractions(val_fraction, test_fraction)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).reshape(-1, *self.input_shape) / 16.0
        y = torch.tensor(labels, dtype=torch.long)
        order = torch.randperm(len(y), generator=self.split_generator())
        n_val, n_test = int(len(y) * self.val_fraction), int(len(y) * self.test_fraction)
        val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
        return x[train], y[train], x[val], y[val], x[test], y[test]
