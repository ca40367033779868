"""Fashion-MNIST (60,000 + 10,000 images of 28x28, 10 classes) from local IDX ``.gz`` files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from lightning_kd.data.base import TensorDataModule

__all__ = ["DEFAULT_ROOT", "FashionMNISTDataModule", "read_idx"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
HOW_TO_GET = (
    "On Debian or Ubuntu: `apt-get update && apt-get install dataset-fashion-mnist` (installs them under "
    f"{DEFAULT_ROOT}); or point data.root at a folder holding {', '.join(FILES.values())}"
)


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST file format) into a uint8 array.

    Raises:
        ValueError: if the file is not an unsigned-byte IDX file.
    """
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype != 0x08:
        raise ValueError(f"{os.fspath(path)!r} is not an unsigned-byte IDX file (header {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{os.fspath(path)!r} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST read from the IDX files of Debian's ``dataset-fashion-mnist`` (no download).

    The official test set is the test split; ``val_size`` images of the training set, chosen by
    ``split_seed``, are the validation split. Batches are ``(x, y)`` with ``x`` of shape
    ``[B, 1, 28, 28]`` scaled to [0, 1].

    Args:
        root: Folder holding the four ``.gz`` files.
        val_size: Number of training images held out for validation.
        **kwargs: ``batch_size``, ``labeled_size``, ``include_unlabeled``, ``split_seed``.

    Raises:
        FileNotFoundError: on ``setup()``, if a file is missing; the message says how to get them.
    """

    num_classes = 10
    input_shape = (1, 28, 28)

    def __init__(self, root: Union[str, os.PathLike] = DEFAULT_ROOT, val_size: int = 5000, **kwargs):
        super().__init__(**kwargs)
        if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < 60000:
            raise ValueError(f"val_size must be an integer in [1, 59999], got {val_size!r}")
        self.root = Path(root)
        self.val_size = val_size

    def _read(self, key: str) -> Tensor:
        path = self.root / FILES[key]
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file not found: {path}. {HOW_TO_GET}")
        return torch.from_numpy(read_idx(path).copy())

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        x_pool = self._read("train_images").float().div_(255).unsqueeze(1)
        y_pool = self._read("train_labels").long()
        x_test = self._read("test_images").float().div_(255).unsqueeze(1)
        y_test = self._read("test_labels").long()
        order = torch.randperm(len(y_pool), generator=self.split_generator())
        val, train = order[: self.val_size], order[self.val_size :]
        return x_pool[train], y_pool[train], x_pool[val], y_pool[val], x_test, y_test
