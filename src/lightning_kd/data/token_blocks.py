"""``TokenBlocks``: fixed-length token sequences held as one tensor, batched as language-model dicts."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TokenBlocks"]


class TokenBlocks(Dataset):
    """Rows of ``input_ids`` ``[N, L]`` (and optional ``labels`` of the same shape, ``-100`` = not counted).

    An item is ``{"input_ids": [L]}`` (plus ``"labels"``); a list or tensor of indices returns a
    whole batch ``{"input_ids": [B, L]}`` at once, so the in-memory batch sampler needs no
    per-sample collation. Batches follow :func:`~lightning_kd.text.split_lm_batch`.

    Args:
        input_ids: Integer tensor ``[N, L]``.
        labels: Optional integer tensor ``[N, L]``: the tokens that count as targets (e.g. the
            continuation of a prompt, with the prompt set to ``-100``).

    Example:
        >>> import torch
        >>> blocks = TokenBlocks(torch.arange(12).reshape(3, 4))
        >>> len(blocks), blocks[[0, 2]]["input_ids"].tolist()
        (3, [[0, 1, 2, 3], [8, 9, 10, 11]])
    """

    def __init__(self, input_ids: Tensor, labels: Optional[Tensor] = None):
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(
                f"input_ids must be an integer tensor [N, L], got {getattr(input_ids, 'shape', input_ids)!r}"
            )
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
            )
        self.input_ids = input_ids
        self.labels = labels

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: Any) -> dict[str, Tensor]:
        if not isinstance(index, int):
            index = torch.as_tensor(index, dtype=torch.long)
        item = {"input_ids": self.input_ids[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item
