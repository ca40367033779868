"""The batch convention of the language-model modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from torch import Tensor

from lightning_kd.batch import MODEL_INPUT_KEYS
from lightning_kd.losses import IGNORE_INDEX

__all__ = ["LanguageModelBatch", "split_lm_batch"]


class LanguageModelBatch(NamedTuple):
    """A language-model batch: the model's keyword inputs and the next-token targets.

    Attributes:
        inputs: ``{"input_ids", "attention_mask", ...}``, passed to the networks as keyword arguments.
        targets: ``[B, L - 1]``: the token each position predicts (``labels`` shifted by one),
            ``-100`` where it does not count.
        mask: ``[B, L - 1]`` boolean: the positions that count, for the soft and the hard term alike.
        teacher_logits: Precomputed teacher logits or ``TopKLogits`` ``[B, L - 1, ...]``, if the batch has them.
        index: The samples' indices (from :class:`~lightning_kd.data.IndexedDataset`), the key of stored
            teacher outputs.
    """

    inputs: dict[str, Tensor]
    targets: Tensor
    mask: Tensor
    teacher_logits: Optional[Any] = None
    index: Optional[Tensor] = None


def split_lm_batch(batch: Any, ignore_index: int = IGNORE_INDEX) -> LanguageModelBatch:
    """Split a dict with ``input_ids`` ``[B, L]``, optional ``attention_mask`` and ``labels``.

    ``labels`` default to ``input_ids`` with the padded positions (``attention_mask == 0``) set to
    ``ignore_index``. Position ``t``'s logits are scored against token ``t + 1``, so the targets
    are ``labels[:, 1:]``.

    Example:
        >>> import torch
        >>> parts = split_lm_batch({"input_ids": torch.tensor([[5, 6, 7, 0]]),
        ...                         "attention_mask": torch.tensor([[1, 1, 1, 0]])})
        >>> parts.targets.tolist(), parts.mask.tolist()
        ([[6, 7, -100]], [[True, True, False]])
    """
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(f"a language-model batch must be a dict with 'input_ids' [B, L], got {keys}")
    input_ids = batch["input_ids"]
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an integer tensor [B, L], got {getattr(input_ids, 'shape', input_ids)!r}")
    if input_ids.shape[1] < 2:
        raise ValueError(
            f"input_ids need at least 2 positions to predict a next token, got shape {tuple(input_ids.shape)}"
        )
    inputs = {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}
    labels = batch.get("labels")
    if labels is None:
        labels = input_ids
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, ignore_index)
    elif labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
    targets = labels[:, 1:]
    return LanguageModelBatch(inputs, targets, targets != ignore_index, batch.get("teacher_logits"), batch.get("index"))
