"""The soft-target loss, dense or chunked, and its fused form that computes the student's head inside."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.checks import (
    check_beta,
    check_chunk_size,
    check_divergence,
    check_temperature,
    check_vocab_alignment,
    compute_dtype,
    counted_rows,
    normalise,
)
from lightning_kd.losses.chunking import ChunkValueAndGrad, chunked_rows_sum, fused_linear_rows_sum
from lightning_kd.losses.divergences import divergence_per_position, divergence_value_and_grad
from lightning_kd.losses.standardize import standardize_logits
from lightning_kd.losses.topk import TopKLogits

__all__ = ["TeacherLogits", "aligned_classes", "linear_soft_target_loss", "soft_target_loss"]

TeacherLogits = Union[Tensor, TopKLogits]


def _check_settings(
    temperature: float, divergence: str, beta: float, vocab_alignment: str, chunk_size: Optional[int]
) -> float:
    temperature = check_temperature(temperature)
    check_divergence(divergence)
    if divergence == "jsd":
        check_beta(beta)
    check_vocab_alignment(vocab_alignment)
    check_chunk_size(chunk_size)
    return temperature


def _check_teacher(teacher_logits: TeacherLogits, positions_shape: torch.Size, student_classes: int) -> None:
    """Shapes: the teacher's positions are the student's; its class count is aligned later."""
    if isinstance(teacher_logits, TopKLogits):
        teacher_logits.check()
        shape = teacher_logits.values.shape
    elif isinstance(teacher_logits, Tensor):
        shape = teacher_logits.shape
    else:
        raise TypeError(f"teacher_logits must be a torch.Tensor or TopKLogits, got {type(teacher_logits).__name__}")
    if len(shape) < 1 or shape[:-1] != positions_shape:
        raise ValueError(
            "student and teacher logits must have the same positions, got student "
            f"{(*tuple(positions_shape), student_classes)} and teacher {tuple(shape)}"
        )


def aligned_classes(student_classes: int, teacher_logits: TeacherLogits, vocab_alignment: str) -> int:
    """The number of classes both sides are compared on, or a ``ValueError`` naming both sizes.

    ``"truncate"`` keeps the first ``min(Vs, Vt)`` classes of both; a top-k teacher must index
    the student's classes.
    """
    if isinstance(teacher_logits, TopKLogits):
        if teacher_logits.indices.numel() and int(teacher_logits.indices.max()) >= student_classes:
            if vocab_alignment != "truncate":
                raise ValueError(
                    f"the top-k teacher indexes class {int(teacher_logits.indices.max())}, beyond the student's "
                    f"{student_classes} classes; pass vocab_alignment='truncate' to drop those entries"
                )
        return student_classes
    teacher_classes = teacher_logits.shape[-1]
    if teacher_classes != student_classes:
        if vocab_alignment != "truncate":
            raise ValueError(
                f"student and teacher vocabularies differ: student {student_classes} classes, teacher "
                f"{teacher_classes}; if one is only padded (e.g. an embedding rounded up to a multiple of 64), "
                "pass vocab_alignment='truncate' to compare the first min of the two"
            )
        return min(student_classes, teacher_classes)
    return student_classes


def _teacher_rows(teacher_logits: TeacherLogits, index: Tensor, classes: int) -> TeacherLogits:
    """The teacher's rows ``index`` of its flattened positions, cut to ``classes``."""
    if isinstance(teacher_logits, TopKLogits):
        values = teacher_logits.values.reshape(-1, teacher_logits.values.shape[-1]).index_select(0, index)
        indices = teacher_logits.indices.reshape(-1, teacher_logits.indices.shape[-1]).index_select(0, index)
        beyond = indices >= classes
        if bool(beyond.any()):  # truncate: entries outside the student's classes are dropped
            values = values.masked_fill(beyond, float("-inf"))
            indices = indices.masked_fill(beyond, 0)
        return TopKLogits(values, indices)
    return teacher_logits.reshape(-1, teacher_logits.shape[-1]).index_select(0, index)[:, :classes]


def _chunk_value_and_grad(
    teacher_logits: TeacherLogits, classes: int, temperature: float, divergence: str, beta: float
) -> ChunkValueAndGrad:
    """The closed-form value and gradient of a chunk of rows, over their first ``classes`` columns
    (the rest, when truncated, get a zero gradient)."""

    def value_and_grad(logits: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        teacher = _teacher_rows(teacher_logits, index, classes)
        if classes == logits.shape[1]:
            return divergence_value_and_grad(logits, teacher, temperature, divergence, beta)
        value, grad = divergence_value_and_grad(logits[:, :classes].clone(), teacher, temperature, divergence, beta)
        logits.zero_()[:, :classes] = grad
        return value, logits

    return value_and_grad


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: TeacherLogits,
    temperature: float,
    mask: Optional[Tensor] = None,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_positions: Optional[Union[int, float, Tensor]] = None,
    chunk_size: Optional[int] = None,
    vocab_alignment: str = "error",
    standardize: bool = False,
) -> Tensor:
    """Soft-target loss ``T**2 * D(softmax(t / T), softmax(s / T))``, averaged over positions.

    The divergence ``D`` (see :mod:`lightning_kd.losses.divergences`) is summed over the last
    (class) dimension. The result is the sum over the counted positions (all, or the ``True`` ones
    of ``mask``) divided by their count (PyTorch's ``reduction="batchmean"``, not ``"mean"``,
    which also divides by the class count), or by ``num_positions`` when given: the count of a
    larger whole, such as all micro-batches of one optimizer step on all ranks. An all-masked
    batch gives 0 with a graph (a zero gradient, never NaN). The ``T**2`` factor keeps the
    gradient's size independent of ``T``: for ``forward_kl`` the gradient with respect to the
    student logits is ``T * (q - p) / B``.

    The loss is computed in float32 at least: bf16/fp16 logits are upcast, float64 stays float64.
    As ``T`` grows the forward KL tends to :func:`~lightning_kd.losses.logit_matching_loss`. In
    float32 its value follows that limit up to about ``T = 100``; past that, cancellation in
    ``log p - log q`` dominates the value (the gradient stays accurate).

    Args:
        student_logits: Student logits, ``[B, C]`` or ``[B, L, C]``.
        teacher_logits: Teacher logits of the same positions, or a :class:`TopKLogits`.
        temperature: Softmax temperature ``T > 0``.
        mask: Optional boolean mask of the positions (the logits' shape without the class
            dimension); only ``True`` positions count.
        divergence: ``"forward_kl"`` (the default, Hinton's), ``"reverse_kl"``, ``"jsd"`` or ``"tvd"``.
        beta: The JSD's mixture weight, strictly between 0 and 1.
        num_positions: Divide the sum by this instead of the counted positions.
        chunk_size: Process this many positions at a time: no whole-batch float32 ``[positions, C]``
            intermediate exists (same value and gradient).
        vocab_alignment: ``"error"`` (default) when the class counts differ, or ``"truncate"``
            to compare the first ``min(Vs, Vt)`` classes of both.
        standardize: Z-score the student's and the teacher's logits per position first (logit
            standardisation, Sun et al. 2024; see :func:`~lightning_kd.losses.standardize_logits`).

    Returns:
        A scalar tensor, float32 or float64.

    Raises:
        ValueError: for a bad temperature, divergence, beta or chunk size, positions that differ,
            or vocabularies that differ without ``vocab_alignment="truncate"``.

    Example:
        >>> import torch
        >>> s, t = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> round(soft_target_loss(s, t, temperature=2.0).item(), 4)
        0.1207
        >>> round(soft_target_loss(s, t, temperature=2.0, divergence="jsd", beta=0.5).item(), 4)
        0.0295
    """
    temperature = _check_settings(temperature, divergence, beta, vocab_alignment, chunk_size)
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 1:
        raise TypeError(f"student_logits must be a torch.Tensor with a class dimension, got {student_logits!r:.60}")
    classes = student_logits.shape[-1]
    positions_shape = student_logits.shape[:-1]
    _check_teacher(teacher_logits, positions_shape, classes)
    classes = aligned_classes(classes, teacher_logits, vocab_alignment)
    if standardize:
        if isinstance(teacher_logits, TopKLogits):
            raise ValueError("standardize=True needs every teacher logit (each row's mean and spread), not top-k")
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    rows = counted_rows(positions_shape, mask, student_logits.device)
    flat = student_logits.reshape(-1, student_logits.shape[-1])
    count = flat.shape[0] if rows is None else rows.numel()

    dense = isinstance(teacher_logits, Tensor) and classes == flat.shape[1] == teacher_logits.shape[-1]
    if chunk_size is not None:
        chunk_fn = _chunk_value_and_grad(teacher_logits, classes, temperature, divergence, beta)
        total = chunked_rows_sum(flat, rows, chunk_fn, chunk_size)
    elif rows is None and dense and divergence == "forward_kl":
        # One fused sum (the seed's kernel, bit for bit): a small student's step is dominated by such kernels.
        dtype = compute_dtype(student_logits, teacher_logits)
        log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
        log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
        total = F.kl_div(log_q, log_p, reduction="sum", log_target=True) * temperature**2
    else:
        index = torch.arange(count, device=flat.device) if rows is None else rows
        teacher = _teacher_rows(teacher_logits, index, classes)
        total = divergence_per_position(
            flat.index_select(0, index)[:, :classes], teacher, temperature, divergence, beta
        ).sum()
    return normalise(total, count, num_positions)


def linear_soft_target_loss(
    student_hidden: Tensor,
    head_weight: Tensor,
    teacher_logits: TeacherLogits,
    temperature: float,
    mask: Optional[Tensor] = None,
    *,
    head_bias: Optional[Tensor] = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_positions: Optional[Union[int, float, Tensor]] = None,
    chunk_size: int = 1024,
    vocab_alignment: str = "error",
) -> Tensor:
    """:func:`soft_target_loss` of ``student_hidden @ head_weight.T + head_bias``, without the full logits.

    The student's output head is applied inside the loss, ``chunk_size`` positions at a time;
    each chunk's value and gradients (for the hidden states, the head weight and bias) are
    computed at once, so the student's logits never exist for the whole batch (Liger-Kernel's
    fused linear losses work the same way).

    Args:
        student_hidden: The student's final hidden states, ``[B, H]`` or ``[B, L, H]``.
        head_weight: The output head's weight, ``[V, H]``.
        teacher_logits: Teacher logits ``[..., V]`` of the same positions, or a :class:`TopKLogits`.
        temperature: Softmax temperature ``T > 0``.
        mask: Optional boolean mask of the positions.
        head_bias: The output head's bias, ``[V]``, if it has one.
        divergence: See :func:`soft_target_loss`.
        beta: See :func:`soft_target_loss`.
        num_positions: See :func:`soft_target_loss`.
        chunk_size: Positions per chunk.
        vocab_alignment: See :func:`soft_target_loss`.

    Returns:
        A scalar tensor, float32 or float64.

    Example:
        >>> import torch
        >>> h, w, t = torch.randn(2, 5, 4), torch.randn(7, 4), torch.randn(2, 5, 7)
        >>> fused = linear_soft_target_loss(h, w, t, 2.0, chunk_size=3)
        >>> torch.allclose(fused, soft_target_loss(h @ w.T, t, 2.0))
        True
    """
    temperature = _check_settings(temperature, divergence, beta, vocab_alignment, chunk_size)
    for name, value in (("student_hidden", student_hidden), ("head_weight", head_weight)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if head_weight.dim() != 2 or head_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(
            f"head_weight must be [V, H] with H = student_hidden's last size {student_hidden.shape[-1]}, "
            f"got {tuple(head_weight.shape)}"
        )
    if head_bias is not None and head_bias.shape != head_weight.shape[:1]:
        raise ValueError(f"head_bias must be [V] = [{head_weight.shape[0]}], got {tuple(head_bias.shape)}")
    positions_shape = student_hidden.shape[:-1]
    _check_teacher(teacher_logits, positions_shape, head_weight.shape[0])
    classes = aligned_classes(head_weight.shape[0], teacher_logits, vocab_alignment)
    rows = counted_rows(positions_shape, mask, student_hidden.device)
    flat = student_hidden.reshape(-1, student_hidden.shape[-1])
    count = flat.shape[0] if rows is None else rows.numel()

    chunk_fn = _chunk_value_and_grad(teacher_logits, classes, temperature, divergence, beta)
    total = fused_linear_rows_sum(flat, head_weight, head_bias, rows, chunk_fn, chunk_size)
    return normalise(total, count, num_positions)
