"""Logit standardisation (Sun et al., CVPR 2024): z-score each row of logits before the softmax."""

from __future__ import annotations

from torch import Tensor

from lightning_kd.losses.checks import compute_dtype

__all__ = ["STANDARDIZE_EPS", "standardize_logits"]

STANDARDIZE_EPS = 1e-7  # as in the paper's code


def standardize_logits(logits: Tensor) -> Tensor:
    """``(z - mean(z)) / (std(z) + 1e-7)`` over the last dimension (unbiased std), in float32 at least.

    With standardised logits every row has mean 0 and standard deviation 1 whatever the network's
    logit scale, so the temperature no longer has to match the teacher's and the student's
    scales: ``T`` then sets the sharpness of a unit-variance row, and a student need not copy the
    teacher's logit magnitude, only their relative order and spacing.

    Example:
        >>> import torch
        >>> z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> [round(v, 4) for v in z[0].tolist()]
        [-1.0, 0.0, 1.0]
    """
    logits = logits.to(compute_dtype(logits))
    centred = logits - logits.mean(dim=-1, keepdim=True)
    return centred / (logits.std(dim=-1, keepdim=True) + STANDARDIZE_EPS)
