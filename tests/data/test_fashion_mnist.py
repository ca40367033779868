"""Fashion-MNIST loading, on tiny IDX files written by the test (the real set is not needed)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from kd_testing import write_fashion_mnist, write_idx
from lightning_kd.data import FashionMNISTDataModule
from lightning_kd.data.fashion_mnist import read_idx


@pytest.fixture
def fake_root(tmp_path):
    return write_fashion_mnist(tmp_path)


def test_read_idx_round_trip(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", data)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), data)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as handle:
        handle.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match=r"is truncated: header says \(10,\), found 3 values"):
        read_idx(tmp_path / "bad.gz")


def test_splits_shapes_and_scaling(fake_root):
    data = FashionMNISTDataModule(root=fake_root, val_size=10, batch_size=8, labeled_size=20, include_unlabeled=True)
    data.setup()
    assert len(data.train_set) == 40 and len(data.val_set) == 10 and len(data.test_set) == 20
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert (data.train_set.tensors[1][20:] == -100).all() and (data.train_set.tensors[1][:20] >= 0).all()


def test_missing_files_say_how_to_get_them(tmp_path):
    data = FashionMNISTDataModule(root=tmp_path / "absent")
    with pytest.raises(
        FileNotFoundError, match=r"Fashion-MNIST file not found: .*absent/train-images.*apt-get install"
    ):
        data.setup()
