"""The hard-target loss (cross-entropy on the labels) and logit matching."""

from __future__ import annotations

from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.checks import IGNORE_INDEX, compute_dtype, counted_rows, normalise
from lightning_kd.losses.chunking import ChunkValueAndGrad, chunked_rows_sum, fused_linear_rows_sum
from lightning_kd.losses.divergences import cross_entropy_value_and_grad

__all__ = ["hard_target_loss", "linear_hard_target_loss", "logit_matching_loss"]


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    for name, value in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() < 1:
            raise ValueError(f"{name} must have a class dimension, got a scalar tensor")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )


def _cross_entropy_chunks(flat_targets: Tensor) -> ChunkValueAndGrad:
    """The closed-form cross-entropy and gradient of a chunk of rows against their targets."""

    def value_and_grad(logits: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        return cross_entropy_value_and_grad(logits, flat_targets.index_select(0, index))

    return value_and_grad


def logit_matching_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor] = None,
    *,
    num_positions: Optional[Union[int, float, Tensor]] = None,
) -> Tensor:
    """Logit matching ``mean(||z~ - v~||**2 / (2 C))``, the ``T -> infinity`` limit of the soft loss.

    ``z~`` and ``v~`` are the student and teacher logits made zero-mean over the ``C`` classes of
    each sample. This is Hinton et al.'s high-temperature limit of the forward-KL soft loss, in
    value and gradient, so it is a drop-in replacement for the KL soft term.

    Args:
        student_logits: Student logits, ``[B, C]`` or ``[B, L, C]``.
        teacher_logits: Teacher logits of the same shape.
        mask: Optional boolean mask of shape ``[B, L]``; only ``True`` positions count.
        num_positions: Divide the sum by this instead of the counted positions.

    Returns:
        A scalar tensor, float32 or float64.

    Example:
        >>> import torch
        >>> s, t = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
        >>> logit_matching_loss(s, t).item()
        0.5
    """
    _check_pair(student_logits, teacher_logits)
    dtype = compute_dtype(student_logits, teacher_logits)
    classes = student_logits.shape[-1]
    rows = counted_rows(student_logits.shape[:-1], mask, student_logits.device)
    difference = (student_logits.to(dtype) - teacher_logits.to(dtype)).reshape(-1, classes)
    if rows is not None:
        difference = difference.index_select(0, rows)
    centred = difference - difference.mean(dim=-1, keepdim=True)  # z~ - v~ = centre(z - v)
    total = centred.pow(2).sum() / (2 * classes)
    return normalise(total, difference.shape[0], num_positions)


def hard_target_loss(
    student_logits: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    *,
    num_positions: Optional[Union[int, float, Tensor]] = None,
    chunk_size: Optional[int] = None,
) -> Tensor:
    """Cross-entropy of the student at ``T = 1`` against the true labels.

    Args:
        student_logits: Student logits, ``[B, C]`` or ``[B, L, C]``.
        targets: Integer class labels, ``[B]`` or ``[B, L]``.
        ignore_index: Label value that does not count (padding, or an unlabeled sample).
        num_positions: Divide the sum by this instead of the number of counted labels.
        chunk_size: Process this many positions at a time (no whole-batch float32 log-softmax).

    Returns:
        A scalar tensor, float32 or float64, averaged over the counted labels; 0 when there are none.

    Example:
        >>> import torch
        >>> round(hard_target_loss(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])).item(), 4)
        0.6931
    """
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
    if targets.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"targets must have the logits' shape without the class dimension, {tuple(student_logits.shape[:-1])}, "
            f"got {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    num_classes = student_logits.shape[-1]
    dtype = compute_dtype(student_logits)
    flat_targets = targets.reshape(-1).long()
    counted = (flat_targets != ignore_index).sum()  # a tensor: no host sync
    # Sum over the counted labels, then divide: a batch of unlabeled samples only (a transfer set
    # mixing labeled and unlabeled data) gives 0, where PyTorch's "mean" would give 0 / 0 = NaN.
    if chunk_size is None:
        logits = student_logits.to(dtype).reshape(-1, num_classes)
        total = F.cross_entropy(logits, flat_targets, ignore_index=ignore_index, reduction="sum")
    else:
        rows = (flat_targets != ignore_index).nonzero().squeeze(-1)

        chunk_fn = _cross_entropy_chunks(flat_targets)
        total = chunked_rows_sum(student_logits.reshape(-1, num_classes), rows, chunk_fn, chunk_size)
    return normalise(total, counted, num_positions)


def linear_hard_target_loss(
    student_hidden: Tensor,
    head_weight: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    *,
    head_bias: Optional[Tensor] = None,
    num_positions: Optional[Union[int, float, Tensor]] = None,
    chunk_size: int = 1024,
) -> Tensor:
    """:func:`hard_target_loss` of ``student_hidden @ head_weight.T + head_bias``, without the full logits.

    Example:
        >>> import torch
        >>> h, w, y = torch.randn(2, 5, 4), torch.randn(7, 4), torch.randint(0, 7, (2, 5))
        >>> torch.allclose(linear_hard_target_loss(h, w, y, chunk_size=3), hard_target_loss(h @ w.T, y))
        True
    """
    if targets.shape != student_hidden.shape[:-1]:
        raise ValueError(
            f"targets must have the hidden states' shape without the hidden dimension, "
            f"{tuple(student_hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    flat_targets = targets.reshape(-1).long()
    counted = flat_targets != ignore_index
    rows = counted.nonzero().squeeze(-1)

    flat = student_hidden.reshape(-1, student_hidden.shape[-1])
    total = fused_linear_rows_sum(flat, head_weight, head_bias, rows, _cross_entropy_chunks(flat_targets), chunk_size)
    return normalise(total, counted.sum(), num_positions)
