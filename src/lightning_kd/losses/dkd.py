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

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.losses.checks import IGNORE_INDEX, CheckedAttribute, check_temperature, compute_dtype
from lightning_kd.losses.distillation_loss import DistillationLossOutput
from lightning_kd.losses.divergences import kl_terms
from lightning_kd.losses.hard_target import hard_target_loss
from lightning_kd.losses.standardize import standardize_logits
from lightning_kd.losses.topk import TopKLogits

__all__ = ["DKDLoss", "DKDTerms", "dkd_loss", "dkd_terms"]


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
    tckd = kl_terms(p_t, q_t) + kl_terms(p_rest, q_rest)
    nckd = kl_terms(p_other, q_other).sum(dim=-1)
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


def _check_weight(name: str, value: float, upper: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or (upper and value > upper):
        expected = f"a number in [0, {upper:g}]" if upper else "a number >= 0"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


class DKDLoss(nn.Module):
    """Decoupled KD as a loss module: ``ce_weight * CE + warmup * (alpha_tckd * TCKD + beta_nckd * NCKD)``.

    Use it as a ``DistillationModule``'s ``loss`` (``kd-train distill=dkd``). The returned
    ``soft`` is the DKD term and ``hard`` the cross-entropy; ``terms`` holds ``tckd`` and ``nckd``
    (logged as ``train/tckd``, ``train/nckd``). ``warmup`` is the DKD term's weight at this point
    of training: the original recipe ramps it linearly from 0 to 1 over the first 20 epochs, which
    :class:`~lightning_kd.callbacks.WarmupSchedule` does (``callbacks=[default,dkd_warmup]``).

    Args:
        temperature: Softmax temperature, finite and ``> 0``.
        alpha_tckd: Weight of the target-class term.
        beta_nckd: Weight of the non-target term.
        ce_weight: Weight of the cross-entropy on the labels.
        warmup: Initial weight of the DKD term, in ``[0, 1]``.
        standardize: Z-score both logits per sample first (logit standardisation).
        ignore_index: Label of unlabeled samples (they count in neither term).

    Example:
        >>> import torch
        >>> out = DKDLoss(temperature=4.0)(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]))
        >>> float(out.soft), round(float(out.total), 4), sorted(out.terms)
        (0.0, 1.0986, ['nckd', 'tckd'])
    """

    objective = "dkd"
    temperature = CheckedAttribute(check_temperature, "Temperature of the DKD term; checked on every assignment.")
    warmup = CheckedAttribute(
        lambda value: _check_weight("warmup", value, upper=1.0),
        "Weight of the DKD term in [0, 1]; a schedule sets it.Weight of the DKD term in [0, 1] (a schedule sets it).",
    )

    def __init__(
        self,
        temperature: float = 4.0,
        alpha_tckd: float = 1.0,
        beta_nckd: float = 8.0,
        ce_weight: float = 1.0,
        warmup: float = 1.0,
        standardize: bool = False,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        self.temperature = temperature
        self.alpha_tckd = _check_weight("alpha_tckd", alpha_tckd)
        self.beta_nckd = _check_weight("beta_nckd", beta_nckd)
        self.ce_weight = _check_weight("ce_weight", ce_weight)
        self.warmup = warmup
        self.standardize = bool(standardize)
        self.ignore_index = ignore_index

    def hparams(self) -> dict:
        """Primitive settings, fit for a checkpoint's hyperparameters."""
        return {
            "objective": self.objective,
            "temperature": self.temperature,
            "alpha_tckd": self.alpha_tckd,
            "beta_nckd": self.beta_nckd,
            "ce_weight": self.ce_weight,
            "standardize": self.standardize,
        }

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Optional[Tensor] = None
    ) -> DistillationLossOutput:
        """Compute the loss; DKD needs labels (its split is at the target class)."""
        if targets is None:
            raise ValueError("DKDLoss needs labels: its terms are split at each sample's target class")
        if isinstance(teacher_logits, TopKLogits):
            raise ValueError("DKDLoss needs every teacher logit, not a top-k teacher")
        terms = dkd_terms(
            student_logits,
            teacher_logits,
            targets,
            self.temperature,
            standardize=self.standardize,
            ignore_index=self.ignore_index,
        )
        soft = self.alpha_tckd * terms.tckd + self.beta_nckd * terms.nckd
        hard = hard_target_loss(student_logits, targets, self.ignore_index)
        total = self.ce_weight * hard + self.warmup * soft if self.warmup > 0 else self.ce_weight * hard
        return DistillationLossOutput(total, soft, hard, {"tckd": terms.tckd, "nckd": terms.nckd})
