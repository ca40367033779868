"""``IndexedDataset``: a dataset whose items carry their index, the key of cached teacher outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset of ``(x, y)`` or ``(x,)`` items into dicts with their index.

    An item is ``{"x": x, "y": y, "index": i}`` (no ``"y"`` for ``(x,)`` items); a dict item (a
    tokenized text) gains the key ``"index"``. The index is
    the position in the wrapped dataset, the row of a teacher-output cache. A list or tensor of
    indices returns a whole batch, so the batch-sampler fast path of in-memory tensor datasets
    (one indexing per batch, no per-sample collation) keeps working.

    Args:
        dataset: A map-style dataset returning ``(x, y)`` or ``(x,)``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = IndexedDataset(TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])))
        >>> data[2]["index"], data[[1, 3]]["index"]
        (2, tensor([1, 3]))
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        item = self.dataset[index]
        if not isinstance(index, int):
            index = torch.as_tensor(index, dtype=torch.long)
        if isinstance(item, Mapping):  # a tokenized item: {"input_ids", "attention_mask", ...}
            return {**item, "index": index}
        if not isinstance(item, (tuple, list)) or len(item) not in (1, 2):
            raise TypeError(f"IndexedDataset needs items (x, y), (x,) or dicts, got {type(item).__name__}")
        batch = {"x": item[0], "index": index}
        if len(item) == 2:
            batch["y"] = item[1]
        return batch
