from __future__ import annotations

import pytest
import torch

from lightning_kd.data import DigitsDataModule


def test_split_is_fixed_complete_and_scaled():
    data = DigitsDataModule(batch_size=32)
    data.setup()
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() <= 1.0
    again = DigitsDataModule(batch_size=32)
    again.setup()
    assert torch.equal(data.val_set.tensors[0], again.val_set.tensors[0])
    assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 1797


def test_labeled_size_limits_the_labeled_set():
    data = DigitsDataModule(labeled_size=100)
    data.setup()
    assert len(data.train_set) == 100 and (data.train_set.tensors[1] >= 0).all()


def test_unlabeled_samples_join_the_transfer_set_with_ignored_labels():
    labeled, transfer = DigitsDataModule(labeled_size=100), DigitsDataModule(labeled_size=100, include_unlabeled=True)
    labeled.setup()
    transfer.setup()
    x, y = transfer.train_set.tensors
    assert len(y) == 1259 and (y[100:] == -100).all()
    assert torch.equal(x[:100], labeled.train_set.tensors[0]) and torch.equal(y[:100], labeled.train_set.tensors[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "sum < 1, got 0.6 and 0.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_bad_labeled_size():
    data = DigitsDataModule(labeled_size=100000)
    with pytest.raises(ValueError, match=r"labeled_size must be in \[1, 1259\], got 100000"):
        data.setup()
