"""Decoupled knowledge distillation (Zhao et al., CVPR 2022): the soft loss split at the target class.

With ``p`` the teacher's and ``q`` the student's softened distributions of one sample whose label
is ``t``:

* TCKD, the target-class term: the KL divergence between the binary distributions
  ``(p_t, 1 - p_t)`` and ``(q_t, 1 - q_t)``;
* NCKD, the non-target term: the KL divergence between ``p`` and ``q`` renormalised over the
  classes other than ``t``.

Hinton's KD is ``TCKD + (1 - p_t) NCKD``: the non-target knowledge is suppressed exactly where the
teacher is confident. DKD weights the terms freely, ``alpha_tckd * TCKD + beta_nckd * NCKD``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.checks import IGNORE_INDEX, check_temperature, compute_dtype
from lightning_kd.losses.standardize import standardize_logits

__all__ = ["DKDTerms", "dkd_loss", "dkd_terms"]


class DKDTerms(NamedTuple):
    """The two terms of DKD, each times ``T**2`` and averaged over the labeled samples."""

    tckd: Tensor
    nckd: Tensor


def _split_at_target(log_probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``log p_t``, ``log (1 - p_t)`` and the non-target log-distribution (``-inf`` at ``t``)."""
    at_target = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    others = log_probs.scatter(-1, targets.unsqueeze(-1), float("-inf"))
    log_rest = torch.logsumexp(others, dim=-1)  # log(1 - p_t), without the cancellation of 1 - p_t
    return at_target, log_rest, others - log_rest.unsqueeze(-1)


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``a (log a - log b)`` elementwise, 0 where ``a`` is 0."""
    return torch.where(log_a > float("-inf"), log_a.exp() * (log_a - log_b), 0.0)


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    *,
    standardize: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> DKDTerms:
    """TCKD and NCKD for ``[B, C]`` logits and labels ``[B]`` (samples labeled ``ignore_index`` do not count).

    Example:
        >>> import torch
        >>> s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
        >>> terms = dkd_terms(s, t, y, 2.0)
        >>> bool(terms.tckd >= 0), bool(terms.nckd >= 0)
        (True, True)
    """
    temperature = check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "DKD needs student and teacher logits of one shape [B, C], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if targets.shape != student_logits.shape[:1] or targets.is_floating_point():
        raise ValueError(f"DKD needs integer labels [B] = [{student_logits.shape[0]}], got {tuple(targets.shape)}")
    dtype = compute_dtype(student_logits, teacher_logits)
    s, t = student_logits.to(dtype), teacher_logits.to(dtype)
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    labeled = targets != ignore_index
    s, t, y = s[labeled], t[labeled], targets[labeled].long()
    log_q, log_p = F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)
    q_t, q_rest, q_other = _split_at_target(log_q, y)
    p_t, p_rest, p_other = _split_at_target(log_p, y)
    tckd = _kl_terms(p_t, q_t) + _kl_terms(p_rest, q_rest)
    nckd = _kl_terms(p_other, q_other).sum(dim=-1)
    count = max(int(labeled.sum()), 1)
    return DKDTerms(tckd.sum() * temperature**2 / count, nckd.sum() * temperature**2 / count)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    alpha_tckd: float = 1.0,
    beta_nckd: float = 8.0,
    *,
    standardize: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """``alpha_tckd * TCKD + beta_nckd * NCKD`` (each times ``T**2``, averaged over the labeled samples).

    There is no warm-up inside it: the original code ramps the DKD term in over the first 20
    epochs, which is a schedule of its weight, applied by the caller.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        targets: Integer labels ``[B]``; ``ignore_index`` marks samples that do not count.
        temperature: Softmax temperature ``T > 0``.
        alpha_tckd: Weight of the target-class term.
        beta_nckd: Weight of the non-target term.
        standardize: Z-score both logits per sample first (logit standardisation).
        ignore_index: Label value of unlabeled samples.

    Returns:
        A scalar tensor, float32 or float64.

    Example:
        >>> import torch
        >>> s, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
        >>> float(dkd_loss(s, s, y, 4.0))
        0.0
    """
    terms = dkd_terms(
        student_logits, teacher_logits, targets, temperature, standardize=standardize, ignore_index=ignore_index
    )
    return alpha_tckd * terms.tckd + beta_nckd * terms.nckd
