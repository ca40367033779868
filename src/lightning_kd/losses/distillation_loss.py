"""``DistillationLoss``: ``alpha * soft + (1 - alpha) * hard``, as a module."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

from torch import Tensor, nn

from lightning_kd.losses.checks import (
    IGNORE_INDEX,
    CheckedAttribute,
    check_alpha,
    check_beta,
    check_chunk_size,
    check_divergence,
    check_temperature,
    check_vocab_alignment,
)
from lightning_kd.losses.hard_target import hard_target_loss, logit_matching_loss
from lightning_kd.losses.soft_target import TeacherLogits, soft_target_loss
from lightning_kd.losses.topk import TopKLogits

__all__ = ["OBJECTIVES", "DistillationLoss", "DistillationLossOutput"]

OBJECTIVES = ("kl", "mse")


class DistillationLossOutput(NamedTuple):
    """The parts of a distillation loss.

    Attributes:
        total: The value to minimise (``alpha * soft + (1 - alpha) * hard`` for a ``DistillationLoss``).
        soft: The soft term (a divergence at temperature ``T`` times ``T**2``, or logit matching).
        hard: The cross-entropy at ``T = 1``, or ``None`` when no targets were given.
        terms: Further named parts of the soft term, logged as ``train/<name>`` (e.g. DKD's
            ``tckd`` and ``nckd``), or ``None``.
    """

    total: Tensor
    soft: Tensor
    hard: Optional[Tensor]
    terms: Optional[dict[str, Tensor]] = None


class DistillationLoss(nn.Module):
    """Hinton-style distillation loss: ``alpha * soft + (1 - alpha) * hard``.

    Args:
        temperature: Softmax temperature of the soft term, finite and ``> 0``. A plain attribute,
            so a schedule may change it during training.
        alpha: Weight of the SOFT term, in ``[0, 1]``. ``1`` is soft-only (targets may then be
            ``None``: an unlabeled transfer set); ``0`` is hard-only.
        objective: ``"kl"`` for a divergence between the softened distributions (chosen by
            ``divergence``), ``"mse"`` for logit matching.
        ignore_index: Label value ignored by the hard term.
        divergence: ``"forward_kl"`` (default), ``"reverse_kl"``, ``"jsd"`` or ``"tvd"``; see
            :func:`~lightning_kd.losses.soft_target_loss`.
        beta: The JSD's mixture weight, strictly between 0 and 1.
        chunk_size: Positions processed at a time by both terms (``None``: all at once).
        vocab_alignment: ``"error"`` or ``"truncate"``; see :func:`~lightning_kd.losses.soft_target_loss`.
        standardize: Z-score both logits per position before the softened softmax (logit
            standardisation); with ``objective="kl"`` only.

    Example:
        >>> import torch
        >>> loss = DistillationLoss(temperature=2.0, alpha=0.5)
        >>> out = loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]))
        >>> out.soft.item(), round(out.hard.item(), 4), round(out.total.item(), 4)
        (0.0, 1.0986, 0.5493)
    """

    temperature = CheckedAttribute(check_temperature, "Temperature of the soft term; checked on every assignment.")
    alpha = CheckedAttribute(check_alpha, "Weight of the soft term; checked on every assignment.")

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.9,
        objective: str = "kl",
        ignore_index: int = IGNORE_INDEX,
        *,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        chunk_size: Optional[int] = None,
        vocab_alignment: str = "error",
        standardize: bool = False,
    ):
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.ignore_index = ignore_index
        self.divergence = check_divergence(divergence)
        self.beta = check_beta(beta) if divergence == "jsd" else float(beta)
        self.chunk_size = check_chunk_size(chunk_size)
        self.vocab_alignment = check_vocab_alignment(vocab_alignment)
        if standardize and objective != "kl":
            raise ValueError(f"standardize=True applies to objective='kl', got objective={objective!r}")
        self.standardize = bool(standardize)

    def hparams(self) -> dict:
        """Primitive settings, fit for a checkpoint's hyperparameters."""
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "objective": self.objective,
            "divergence": self.divergence,
            "beta": self.beta,
            "standardize": self.standardize,
        }

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, objective={self.objective!r}, "
            f"divergence={self.divergence!r}"
        )

    def soft(
        self,
        student_logits: Tensor,
        teacher_logits: TeacherLogits,
        mask: Optional[Tensor] = None,
        num_positions: Optional[Union[int, float, Tensor]] = None,
    ) -> Tensor:
        """The soft term alone, at the current temperature."""
        if self.objective == "mse":
            if isinstance(teacher_logits, TopKLogits):
                raise ValueError("objective='mse' (logit matching) needs every teacher logit, not a top-k teacher")
            return logit_matching_loss(student_logits, teacher_logits, mask, num_positions=num_positions)
        return soft_target_loss(
            student_logits,
            teacher_logits,
            self.temperature,
            mask,
            divergence=self.divergence,
            beta=self.beta,
            num_positions=num_positions,
            chunk_size=self.chunk_size,
            vocab_alignment=self.vocab_alignment,
            standardize=self.standardize,
        )

    def combine(self, soft: Tensor, hard: Optional[Tensor]) -> DistillationLossOutput:
        """``alpha * soft + (1 - alpha) * hard`` (branches rather than ``0 * term``: a non-finite
        unused term must not poison the total)."""
        if hard is None or self.alpha == 1:
            total = soft
        elif self.alpha == 0:
            total = hard
        else:
            total = self.alpha * soft + (1 - self.alpha) * hard
        return DistillationLossOutput(total=total, soft=soft, hard=hard)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: TeacherLogits,
        targets: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        num_positions: Optional[Union[int, float, Tensor]] = None,
    ) -> DistillationLossOutput:
        """Compute the loss.

        Args:
            student_logits: ``[B, C]`` or ``[B, L, C]`` student logits.
            teacher_logits: Teacher logits of the same positions, or a :class:`TopKLogits`.
            targets: Class labels, required unless ``alpha == 1``.
            mask: Optional boolean mask of the positions that count (both terms).
            num_positions: Divide both terms' sums by this count instead of their own (see
                :func:`~lightning_kd.losses.soft_target_loss`).

        Returns:
            A :class:`DistillationLossOutput` with ``total``, ``soft`` and ``hard``.
        """
        if targets is None and self.alpha < 1:
            raise ValueError(
                f"targets are required when alpha < 1 (alpha={self.alpha} gives the hard term weight "
                f"{1 - self.alpha:g}); pass labels, or use alpha=1 for an unlabeled transfer set"
            )
        soft = self.soft(student_logits, teacher_logits, mask, num_positions)
        hard = None
        if targets is not None:
            if mask is not None:
                targets = targets.masked_fill(~mask, self.ignore_index)
            hard = hard_target_loss(
                student_logits, targets, self.ignore_index, num_positions=num_positions, chunk_size=self.chunk_size
            )
        return self.combine(soft, hard)
