"""Distillation losses: pure tensor functions and the :class:`DistillationLoss` module.

Nothing here imports Lightning. The conventions (see Hinton et al., 2015):

* the soft loss is ``T**2 * KL(softmax(t / T) || softmax(s / T))``, summed over classes and
  averaged over samples ("batchmean"), or over unmasked positions for ``[B, L, C]`` inputs;
* the hard loss is the cross-entropy of the student at ``T = 1``;
* ``total = alpha * soft + (1 - alpha) * hard``: ``alpha`` weights the SOFT term;
* losses are computed in at least float32, whatever the precision of the logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "DistillationLoss",
    "DistillationLossOutput",
    "hard_target_loss",
    "logit_matching_loss",
    "soft_target_loss",
]

OBJECTIVES = ("kl", "mse")
IGNORE_INDEX = -100  # label of an unlabeled sample or a padded position, as in PyTorch


def check_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float, or raise if it is not a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a real number, got {temperature!r} ({type(temperature).__name__})")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return float(temperature)


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise if it is not a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a real number in [0, 1], got {alpha!r} ({type(alpha).__name__})")
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1] (it weights the soft term), got {alpha!r}")
    return float(alpha)


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


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: bf16/fp16 lose the small soft-loss gradient ``q - p``; float64 stays."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _mean_over_positions(per_position: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Average a per-position loss over all positions, or over the ``True`` positions of ``mask``."""
    if mask is None:
        return per_position.mean()
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != per_position.shape:
        raise ValueError(
            f"mask must have the logits' shape without the class dimension, {tuple(per_position.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    # masked_fill, not multiplication: padded positions may hold inf, and 0 * inf is NaN.
    total = per_position.masked_fill(~mask, 0.0).sum()
    return total / mask.sum().clamp(min=1)


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Soft-target loss ``T**2 * KL(softmax(t / T) || softmax(s / T))``.

    The KL divergence is summed over the last (class) dimension and averaged over the samples
    (PyTorch's ``reduction="batchmean"``, not ``"mean"``, which also divides by the class count).
    The ``T**2`` factor keeps the gradient's size independent of ``T``: the gradient with respect
    to the student logits is ``T * (q - p) / B``.

    The loss is computed in float32 at least: bf16/fp16 logits are upcast, float64 stays float64.
    As ``T`` grows the loss tends to :func:`logit_matching_loss`. In float32 its value follows
    that limit up to about ``T = 100``; past that, cancellation in ``log p - log q`` dominates the
    value (the gradient stays accurate), and float64 inputs are needed to see the limit.

    Args:
        student_logits: Student logits, ``[B, C]`` or ``[B, L, C]``.
        teacher_logits: Teacher logits of the same shape.
        temperature: Softmax temperature ``T > 0``.
        mask: Optional boolean mask of shape ``[B, L]`` (the logits' shape without the class
            dimension). Only ``True`` positions count, and the loss is averaged over them.

    Returns:
        A scalar tensor, float32 or float64.

    Raises:
        ValueError: if the temperature is not finite and positive, or the shapes differ.

    Example:
        >>> import torch
        >>> s, t = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> round(soft_target_loss(s, t, temperature=2.0).item(), 4)
        0.1207
    """
    temperature = check_temperature(temperature)
    _check_pair(student_logits, teacher_logits)
    dtype = _compute_dtype(student_logits, teacher_logits)
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if mask is None:  # one fused sum: the step of a small student is dominated by such kernels
        positions = max(log_q.numel() // max(log_q.shape[-1], 1), 1)
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True) * (temperature**2 / positions)
    kl_per_position = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)
    return temperature**2 * _mean_over_positions(kl_per_position, mask)


def logit_matching_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Logit matching ``mean(||z~ - v~||**2 / (2 C))``, the ``T -> infinity`` limit of the soft loss.

    ``z~`` and ``v~`` are the student and teacher logits made zero-mean over the ``C`` classes of
    each sample. This is Hinton et al.'s high-temperature limit of :func:`soft_target_loss`, in
    value and gradient, so it is a drop-in replacement for the KL soft term.

    Args:
        student_logits: Student logits, ``[B, C]`` or ``[B, L, C]``.
        teacher_logits: Teacher logits of the same shape.
        mask: Optional boolean mask of shape ``[B, L]``; only ``True`` positions count.

    Returns:
        A scalar tensor, float32 or float64.

    Example:
        >>> import torch
        >>> s, t = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
        >>> logit_matching_loss(s, t).item()
        0.5
    """
    _check_pair(student_logits, teacher_logits)
    dtype = _compute_dtype(student_logits, teacher_logits)
    difference = student_logits.to(dtype) - teacher_logits.to(dtype)
    centred = difference - difference.mean(dim=-1, keepdim=True)  # z~ - v~ = centre(z - v)
    per_position = centred.pow(2).sum(dim=-1) / (2 * difference.shape[-1])
    return _mean_over_positions(per_position, mask)


def hard_target_loss(student_logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy of the student at ``T = 1`` against the true labels.

    Args:
        student_logits: Student logits, ``[B, C]`` or ``[B, L, C]``.
        targets: Integer class labels, ``[B]`` or ``[B, L]``.
        ignore_index: Label value that does not count (padding, or an unlabeled sample).

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
    logits = student_logits.to(_compute_dtype(student_logits)).reshape(-1, num_classes)
    targets = targets.reshape(-1).long()
    # Sum over the counted labels, then divide: a batch of unlabeled samples only (a transfer set
    # mixing labeled and unlabeled data) gives 0, where PyTorch's "mean" would give 0 / 0 = NaN.
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


class DistillationLossOutput(NamedTuple):
    """The parts of a distillation loss.

    Attributes:
        total: ``alpha * soft + (1 - alpha) * hard``, the value to minimise.
        soft: The soft term (KL at temperature ``T`` times ``T**2``, or logit matching).
        hard: The cross-entropy at ``T = 1``, or ``None`` when no targets were given.
    """

    total: Tensor
    soft: Tensor
    hard: Optional[Tensor]


class DistillationLoss(nn.Module):
    """Hinton-style distillation loss: ``alpha * soft + (1 - alpha) * hard``.

    Args:
        temperature: Softmax temperature of the soft term, finite and ``> 0``. A plain attribute,
            so a schedule may change it during training.
        alpha: Weight of the SOFT term, in ``[0, 1]``. ``1`` is soft-only (targets may then be
            ``None``: an unlabeled transfer set); ``0`` is hard-only.
        objective: ``"kl"`` for the tempered KL soft term, ``"mse"`` for logit matching.
        ignore_index: Label value ignored by the hard term.

    Example:
        >>> import torch
        >>> loss = DistillationLoss(temperature=2.0, alpha=0.5)
        >>> out = loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]))
        >>> out.soft.item(), round(out.hard.item(), 4), round(out.total.item(), 4)
        (0.0, 1.0986, 0.5493)
    """

    def __init__(
        self, temperature: float = 4.0, alpha: float = 0.9, objective: str = "kl", ignore_index: int = IGNORE_INDEX
    ):
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.ignore_index = ignore_index

    @property
    def temperature(self) -> float:
        """Temperature of the soft term; validated on every assignment."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)

    @property
    def alpha(self) -> float:
        """Weight of the soft term; validated on every assignment."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = check_alpha(value)

    def hparams(self) -> dict:
        """Primitive settings, fit for a checkpoint's hyperparameters."""
        return {"temperature": self.temperature, "alpha": self.alpha, "objective": self.objective}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, objective={self.objective!r}"

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> DistillationLossOutput:
        """Compute the loss.

        Args:
            student_logits: ``[B, C]`` or ``[B, L, C]`` student logits.
            teacher_logits: Teacher logits of the same shape.
            targets: Class labels, required unless ``alpha == 1``.
            mask: Optional ``[B, L]`` boolean mask of the positions that count (both terms).

        Returns:
            A :class:`DistillationLossOutput` with ``total``, ``soft`` and ``hard``.
        """
        if targets is None and self.alpha < 1:
            raise ValueError(
                f"targets are required when alpha < 1 (alpha={self.alpha} gives the hard term weight "
                f"{1 - self.alpha:g}); pass labels, or use alpha=1 for an unlabeled transfer set"
            )
        if self.objective == "kl":
            soft = soft_target_loss(student_logits, teacher_logits, self.temperature, mask)
        else:
            soft = logit_matching_loss(student_logits, teacher_logits, mask)
        hard = None
        if targets is not None:
            if mask is not None:
                targets = targets.masked_fill(~mask, self.ignore_index)
            hard = hard_target_loss(student_logits, targets, self.ignore_index)
        # Branches rather than 0 * term: a non-finite unused term must not poison the total.
        if hard is None or self.alpha == 1:
            total = soft
        elif self.alpha == 0:
            total = hard
        else:
            total = self.alpha * soft + (1 - self.alpha) * hard
        return DistillationLossOutput(total=total, soft=soft, hard=hard)
