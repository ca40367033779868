"""Intermediate-feature losses: FitNets hints (Romero et al., 2015), attention transfer (Zagoruyko & Komodakis, 2017).

Pure tensor functions of a student feature and a teacher feature; which layers they come from,
and the adapters that map a student feature to the teacher's shape, are the business of
:mod:`lightning_kd.features`. Both losses compute in at least float32, and, as the reference
implementations (the authors' code, mdistiller, torchdistill) do, average rather than sum, so
their scale does not grow with the batch or the feature size: the papers' weights become
``FeaturePair(weight=...)`` (mdistiller uses 100 for FitNets hints and 1000 for attention transfer).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.checks import compute_dtype

__all__ = ["HINT_KINDS", "attention_map", "attention_transfer_loss", "hint_loss"]

HINT_KINDS = ("mse", "cosine")


def _check_features(name: str, student_feature: Tensor, teacher_feature: Tensor, min_dim: int) -> None:
    for role, value in (("student_feature", student_feature), ("teacher_feature", teacher_feature)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name} needs floating-point tensors, got {kind} for {role}")
        if value.dim() < min_dim:
            raise ValueError(
                f"{name} needs features with a batch dimension, at least {min_dim} dimensions, got "
                f"{role} of shape {tuple(value.shape)}"
            )


def hint_loss(
    student_feature: Tensor, teacher_feature: Tensor, kind: str = "mse", mask: Optional[Tensor] = None
) -> Tensor:
    """FitNets' hint loss between a (regressed) student feature and the teacher's feature of one shape.

    * ``kind="mse"``: the mean squared error over all elements, which is the mean over samples
      of each sample's mean squared error (``F.mse_loss``, as mdistiller's FitNet). The paper
      writes ``1/2 ||u_h - r(v_g)||**2`` summed; the two differ by a constant factor that the
      pair's weight absorbs.
    * ``kind="cosine"``: ``1 - cos(s, t)`` per sample, both flattened, averaged over the samples
      (a scale-free hint: only the direction of the feature counts).

    With ``mask`` (boolean, the features' shape without the last dimension, e.g. ``[B, L]`` for
    hidden states ``[B, L, D]``) only the counted positions count: ``"mse"`` averages over the
    counted positions and the last dimension, ``"cosine"`` takes ``1 - cos`` over the last
    dimension of each counted position and averages them (DistilBERT's hidden-state loss). No
    counted position gives 0.

    Args:
        student_feature: ``[B, ...]``, already mapped to the teacher's shape (an adapter).
        teacher_feature: ``[B, ...]``, the same shape; the target.
        kind: ``"mse"`` or ``"cosine"``.
        mask: Optional boolean mask of the counted positions, ``student_feature.shape[:-1]``.

    Returns:
        A scalar tensor, float32 or float64.

    Raises:
        ValueError: for features of different shapes, an unknown ``kind`` or a mask of the wrong shape.
        TypeError: for non-floating features or a non-boolean mask.

    Example:
        >>> import torch
        >>> s, t = torch.zeros(2, 3), torch.ones(2, 3)
        >>> float(hint_loss(s, t)), round(float(hint_loss(t, 2 * t, kind="cosine")), 6)
        (1.0, 0.0)
    """
    if kind not in HINT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HINT_KINDS)}, got {kind!r}")
    _check_features("hint_loss", student_feature, teacher_feature, min_dim=2)
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"hint_loss needs student and teacher features of one shape, got student {tuple(student_feature.shape)} "
            f"and teacher {tuple(teacher_feature.shape)}: map the student's to the teacher's with an adapter "
            "(a 1x1 convolution on channels, or a linear layer)"
        )
    dtype = compute_dtype(student_feature, teacher_feature)
    s, t = student_feature.to(dtype), teacher_feature.to(dtype)
    if mask is None:
        if kind == "mse":
            return (s - t).pow(2).mean()
        return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=-1)).mean()
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != s.shape[:-1]:
        raise ValueError(
            f"mask must have the features' shape without the last dimension, {tuple(s.shape[:-1])}, "
            f"got {tuple(mask.shape)}"
        )
    keep = mask.to(s.device)
    s, t = s[keep], t[keep]  # [N, D]: the counted positions
    count = max(s.shape[0], 1)
    if kind == "mse":
        return (s - t).pow(2).sum() / (count * s.shape[-1])
    return (1 - F.cosine_similarity(s, t, dim=-1)).sum() / count


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p > 0):
        raise ValueError(f"p must be a finite number > 0 (the power of the activations), got {p!r}")
    return float(p)


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """The spatial attention map of a ``[B, C, H, W]`` feature: ``mean_c |A_c|**p``, flattened, unit L2 norm per sample.

    The mean over channels (the authors' code) rather than the paper's sum changes nothing
    after the normalisation. Computed in at least float32.

    Example:
        >>> import torch
        >>> q = attention_map(torch.randn(2, 8, 4, 4))
        >>> q.shape, [round(float(n), 4) for n in q.norm(dim=1)]
        (torch.Size([2, 16]), [1.0, 1.0])
    """
    p = _check_p(p)
    if not isinstance(feature, Tensor) or feature.dim() < 3:
        raise ValueError(
            f"an attention map needs a feature [B, C, H, W], got {tuple(getattr(feature, 'shape', ()))} "
            f"({type(feature).__name__})"
        )
    dtype = compute_dtype(feature)
    return F.normalize(feature.to(dtype).abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention transfer between ``[B, C, H, W]`` maps of equal spatial size.

    With ``Q = attention_map(A, p)`` (``mean_c |A_c|**p`` over the channels, flattened over
    ``H x W`` and L2-normalised per sample), the loss is the mean over all ``B x H x W`` elements
    of ``(Q_s - Q_t)**2``, that is the mean over samples of ``||Q_s - Q_t||**2 / (H W)``: the
    reduction of the authors' code (``(at(x) - at(y)).pow(2).mean()``), mdistiller and
    torchdistill. The paper writes ``beta/2 ||Q_s - Q_t||_2`` and uses ``beta = 1000`` with this
    code, so a weight of about 1000 reproduces it. The channel counts may differ (each map
    averages over its own channels); the spatial sizes must match (mdistiller pools the larger
    map: hook layers of equal resolution instead, or pool first).

    Args:
        student_feature: ``[B, Cs, H, W]`` (any ``[B, C, *spatial]`` works).
        teacher_feature: ``[B, Ct, H, W]``.
        p: The power of the activations (2 in the paper).

    Returns:
        A scalar tensor, float32 or float64.

    Raises:
        ValueError: for features that are not ``[B, C, H, W]`` or differ in batch or spatial size.

    Example:
        >>> import torch
        >>> a = torch.randn(2, 8, 4, 4)
        >>> round(float(attention_transfer_loss(a, 3 * a.repeat(1, 2, 1, 1))), 6)  # the same map, other channels
        0.0
    """
    p = _check_p(p)
    _check_features("attention_transfer_loss", student_feature, teacher_feature, min_dim=3)
    s_shape, t_shape = tuple(student_feature.shape), tuple(teacher_feature.shape)
    if s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
        raise ValueError(
            f"attention transfer needs features [B, C, H, W] of equal batch and spatial sizes, got student {s_shape} "
            f"and teacher {t_shape}: hook layers of equal resolution, or pool the larger map first"
        )
    return (attention_map(student_feature, p) - attention_map(teacher_feature, p)).pow(2).mean()
