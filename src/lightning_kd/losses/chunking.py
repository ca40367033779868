"""Losses evaluated a chunk of positions at a time, so that no whole-batch ``[positions, V]``
intermediate exists: each chunk's value and gradient are computed in the forward pass, in closed
form (see :func:`~lightning_kd.losses.divergences.divergence_value_and_grad`), and the gradient
is handed back in ``backward``, as Liger-Kernel's fused linear losses do.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.checks import compute_dtype

__all__ = ["ChunkValueAndGrad", "chunked_rows_sum", "fused_linear_rows_sum"]

# fn(logits_chunk [n, V] in float32 or wider, owned and overwritable; rows [n]) -> (summed loss, d loss / d logits)
ChunkValueAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _chunks(rows: Optional[Tensor], total: int, chunk_size: int, device: torch.device) -> Iterator[Tensor]:
    count = total if rows is None else rows.numel()
    for start in range(0, count, chunk_size):
        if rows is None:
            yield torch.arange(start, min(start + chunk_size, count), device=device)
        else:
            yield rows[start : start + chunk_size]


class _ChunkedRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, rows: Optional[Tensor], fn: ChunkValueAndGrad, chunk_size: int) -> Tensor:
        dtype = compute_dtype(logits)
        wants_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(logits) if wants_grad else None
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for index in _chunks(rows, logits.shape[0], chunk_size, logits.device):
            value, chunk_grad = fn(logits.index_select(0, index).to(dtype), index)
            if wants_grad:
                grad.index_copy_(0, index, chunk_grad.to(grad.dtype))
            total += value.double()
        ctx.save_for_backward(grad)
        return total.to(dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_output.to(grad.dtype)), None, None, None  # in place: no second [N, V] tensor


def chunked_rows_sum(logits: Tensor, rows: Optional[Tensor], fn: ChunkValueAndGrad, chunk_size: int) -> Tensor:
    """``sum(fn(logits[chunk], chunk).value)`` over chunks of ``chunk_size`` rows (all rows, or ``rows``).

    Only one chunk's temporaries exist at a time; the gradient with respect to ``logits`` is
    kept in their dtype until ``backward``. Rows outside ``rows`` get a zero gradient.
    """
    return _ChunkedRows.apply(logits, rows, fn, chunk_size)


class _FusedLinearRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        rows: Optional[Tensor],
        fn: ChunkValueAndGrad,
        chunk_size: int,
    ) -> Tensor:
        wants = ctx.needs_input_grad[:3]
        dtype = compute_dtype(hidden, weight)
        grad_hidden = torch.zeros_like(hidden) if wants[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if wants[1] else None
        grad_bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if wants[2] else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for index in _chunks(rows, hidden.shape[0], chunk_size, hidden.device):
            h = hidden.index_select(0, index)
            value, grad_logits = fn(F.linear(h, weight, bias).to(dtype), index)
            total += value.double()
            if wants[0]:
                grad_hidden.index_copy_(0, index, (grad_logits.to(weight.dtype) @ weight).to(grad_hidden.dtype))
            if wants[1]:
                grad_weight.addmm_(grad_logits.t(), h.to(dtype))
            if wants[2]:
                grad_bias += grad_logits.sum(dim=0)
            del grad_logits
        ctx.save_for_backward(
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        return total.to(dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grads = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in ctx.saved_tensors]
        return grads[0], grads[1], grads[2], None, None, None


def fused_linear_rows_sum(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    rows: Optional[Tensor],
    fn: ChunkValueAndGrad,
    chunk_size: int,
) -> Tensor:
    """``sum(fn(hidden[chunk] @ weight.T + bias, chunk).value)`` over chunks: the logits never exist whole.

    Gradients flow to ``hidden``, ``weight`` and ``bias``; the weight's is accumulated in float32 (at least).
    """
    return _FusedLinearRows.apply(hidden, weight, bias, rows, fn, chunk_size)
