"""Losses evaluated a chunk of positions at a time, so that no whole-batch ``[positions, V]``
intermediate exists: each chunk's value and gradient are computed in the forward pass (in the
manner of Liger-Kernel's fused linear losses) and the gradient is handed back in ``backward``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["chunked_rows_sum", "fused_linear_rows_sum"]

# fn(logits_chunk [n, V], rows [n]) -> the chunk's summed loss (a scalar with a graph to the logits)
ChunkLoss = Callable[[Tensor, Tensor], Tensor]


def _chunks(rows: Optional[Tensor], total: int, chunk_size: int, device: torch.device):
    count = total if rows is None else rows.numel()
    for start in range(0, count, chunk_size):
        if rows is None:
            yield torch.arange(start, min(start + chunk_size, count), device=device)
        else:
            yield rows[start : start + chunk_size]


class _ChunkedRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, rows: Optional[Tensor], fn: ChunkLoss, chunk_size: int) -> Tensor:
        wants_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(logits) if wants_grad else None
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for index in _chunks(rows, logits.shape[0], chunk_size, logits.device):
            chunk = logits.index_select(0, index)
            if wants_grad:
                with torch.enable_grad():
                    chunk = chunk.detach().requires_grad_(True)
                    value = fn(chunk, index)
                    (chunk_grad,) = torch.autograd.grad(value, chunk)
                grad.index_copy_(0, index, chunk_grad.to(grad.dtype))
            else:
                value = fn(chunk, index)
            total += value.detach().double()
        ctx.save_for_backward(grad)
        return total.to(torch.promote_types(logits.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def chunked_rows_sum(logits: Tensor, rows: Optional[Tensor], fn: ChunkLoss, chunk_size: int) -> Tensor:
    """``sum(fn(logits[chunk], chunk))`` over chunks of ``chunk_size`` rows (all rows, or ``rows``).

    Only one chunk's intermediates exist at a time; the gradient with respect to ``logits`` is
    kept in their dtype until ``backward``.
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
        fn: ChunkLoss,
        chunk_size: int,
    ) -> Tensor:
        wants = ctx.needs_input_grad[:3]
        w = weight.detach().requires_grad_(wants[1])
        b = None if bias is None else bias.detach().requires_grad_(wants[2])
        grad_hidden = torch.zeros_like(hidden) if wants[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if wants[2] else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for index in _chunks(rows, hidden.shape[0], chunk_size, hidden.device):
            h = hidden.index_select(0, index).detach().requires_grad_(wants[0])
            with torch.enable_grad():
                value = fn(F.linear(h, w, b), index)
                inputs = [t for t, wanted in zip((h, w, b), wants, strict=True) if wanted]
                grads = iter(torch.autograd.grad(value, inputs) if inputs else ())
            if wants[0]:
                grad_hidden.index_copy_(0, index, next(grads).to(grad_hidden.dtype))
            if wants[1]:
                grad_weight += next(grads)
            if wants[2]:
                grad_bias += next(grads)
            total += value.detach().double()
        ctx.save_for_backward(
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        return total.to(torch.promote_types(hidden.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grads = [None if g is None else g * grad_output.to(g.dtype) for g in ctx.saved_tensors]
        return grads[0], grads[1], grads[2], None, None, None


def fused_linear_rows_sum(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    rows: Optional[Tensor],
    fn: ChunkLoss,
    chunk_size: int,
) -> Tensor:
    """``sum(fn(hidden[chunk] @ weight.T + bias, chunk))`` over chunks: the logits never exist whole.

    Gradients flow to ``hidden``, ``weight`` and ``bias``; the weight's is accumulated in float32.
    """
    return _FusedLinearRows.apply(hidden, weight, bias, rows, fn, chunk_size)
