"""Fingerprints: SHA-256 digests that say whether a teacher or a dataset is the same as before."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["dataset_fingerprint", "module_fingerprint"]

SAMPLED_ITEMS = 16  # items hashed from a dataset that does not expose its tensors


def _update(digest: Any, name: str, tensor: Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state: names, shapes, dtypes and values of its tensors.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> module_fingerprint(a) == module_fingerprint(a), module_fingerprint(a) == module_fingerprint(b)
        (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        _update(digest, name, tensor)
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """SHA-256 of a dataset's identity: its type, its length and its content.

    A dataset with ``tensors`` (a ``TensorDataset``) is hashed whole. Any other map-style
    dataset is identified by its type, its length and ``SAMPLED_ITEMS`` evenly spaced items, so
    an edit elsewhere goes unseen: give such a dataset an explicit identity where it matters.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> dataset_fingerprint(TensorDataset(x)) == dataset_fingerprint(TensorDataset(x + 1))
        False
    """
    dataset = getattr(dataset, "dataset", dataset)  # look through wrappers such as IndexedDataset
    digest = hashlib.sha256(f"{type(dataset).__module__}.{type(dataset).__qualname__}|{len(dataset)}|".encode())
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        for i, tensor in enumerate(tensors):
            _update(digest, str(i), tensor)
        return digest.hexdigest()
    step = max(len(dataset) // SAMPLED_ITEMS, 1)
    for index in range(0, len(dataset), step):
        item = dataset[index]
        for j, part in enumerate(item if isinstance(item, (tuple, list)) else [item]):
            if isinstance(part, Tensor):
                _update(digest, f"{index}.{j}", part)
            else:
                digest.update(f"{index}.{j}|{part!r}|".encode())
    return digest.hexdigest()
