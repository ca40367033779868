"""The batch convention shared by the modules.

A batch is one of:

* a tuple or list ``(x, y)``: inputs and integer labels;
* a tuple or list ``(x,)``: inputs only (an unlabeled transfer set, ``alpha = 1``);
* a dict with key ``"x"`` and optionally ``"y"``, ``"teacher_logits"`` and ``"index"``.
  Precomputed teacher logits replace the teacher's forward pass (offline distillation); the
  sample index (from :class:`~lightning_kd.data.IndexedDataset`) is the key of a teacher-output cache;
* a dict of tokenized text, as Hugging Face data collators give it: ``"input_ids"`` and
  optionally ``"attention_mask"``, ``"token_type_ids"``, ``"labels"`` (and ``"teacher_logits"``,
  ``"index"``). The model inputs go to the networks as keyword arguments.

A network may return a tensor of logits or an object with ``.logits`` (Hugging Face outputs):
:func:`forward_logits` calls either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from torch import Tensor, nn

__all__ = ["MODEL_INPUT_KEYS", "Batch", "forward_logits", "split_batch"]

# Keys of a tokenized batch that are the networks' keyword arguments.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


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
    if isinstance(batch, Mapping):
        if "x" in batch:
            return Batch(batch["x"], batch.get("y"), batch.get("teacher_logits"), batch.get("index"))
        if "input_ids" in batch:
            inputs = {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}
            return Batch(inputs, batch.get("labels"), batch.get("teacher_logits"), batch.get("index"))
        raise TypeError(f"a dict batch must have the key 'x' or 'input_ids', got keys {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return Batch(*batch)
    if isinstance(batch, (tuple, list)):
        raise TypeError(f"a tuple batch must be (x, y) or (x,), got {len(batch)} elements")
    raise TypeError(f"a batch must be (x, y), (x,) or a dict with 'x', got {type(batch).__name__}")


def forward_logits(network: nn.Module, x: Any) -> Tensor:
    """``network``'s logits for the inputs ``x``: keyword arguments when ``x`` is a mapping, and
    the ``.logits`` of an output object (Hugging Face) or the output itself when it is a tensor.

    Example:
        >>> import torch
        >>> forward_logits(torch.nn.Linear(4, 2), torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """
    output = network(**x) if isinstance(x, Mapping) else network(x)
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"{type(network).__name__} returned {type(output).__name__}; expected a tensor of logits or an object "
            "with .logits"
        )
    return logits
