"""The batch convention shared by the modules.

A batch is one of:

* a tuple or list ``(x, y)``: inputs and integer labels;
* a tuple or list ``(x,)``: inputs only (an unlabeled transfer set, ``alpha = 1``);
* a dict with key ``"x"`` and optionally ``"y"``, ``"teacher_logits"`` and ``"index"``.
  Precomputed teacher logits replace the teacher's forward pass (offline distillation); the
  sample index (from :class:`~lightning_kd.data.IndexedDataset`) is the key of a teacher-output cache.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from torch import Tensor

__all__ = ["Batch", "split_batch"]


class Batch(NamedTuple):
    """A batch split into its parts; absent parts are ``None``."""

    x: Any
    y: Optional[Tensor] = None
    teacher_logits: Optional[Tensor] = None
    index: Optional[Tensor] = None


def split_batch(batch: Any) -> Batch:
    """Split a batch that follows the convention of this module.

    Args:
        batch: ``(x, y)``, ``(x,)``, or a dict with ``"x"`` and optionally ``"y"``,
            ``"teacher_logits"`` and ``"index"``.

    Returns:
        A :class:`Batch`.

    Raises:
        TypeError: if the batch follows none of these forms.

    Example:
        >>> import torch
        >>> split_batch((torch.zeros(2, 4), torch.tensor([0, 1]))).y
        tensor([0, 1])
        >>> split_batch({"x": torch.zeros(2, 4)}).y is None
        True
    """
    if isinstance(batch, dict):
        if "x" not in batch:
            raise TypeError(f"a dict batch must have the key 'x', got keys {sorted(batch)}")
        return Batch(batch["x"], batch.get("y"), batch.get("teacher_logits"), batch.get("index"))
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return Batch(*batch)
    if isinstance(batch, (tuple, list)):
        raise TypeError(f"a tuple batch must be (x, y) or (x,), got {len(batch)} elements")
    raise TypeError(f"a batch must be (x, y), (x,) or a dict with 'x', got {type(batch).__name__}")
