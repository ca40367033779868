"""Argument checks and shared helpers of the losses: bad input fails early, naming the value."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "CheckedAttribute",
    "DIVERGENCES",
    "IGNORE_INDEX",
    "VOCAB_ALIGNMENTS",
    "check_alpha",
    "check_beta",
    "check_chunk_size",
    "check_divergence",
    "check_temperature",
    "check_vocab_alignment",
    "compute_dtype",
    "counted_rows",
    "normalise",
]

IGNORE_INDEX = -100  # label of an unlabeled sample or a padded position, as in PyTorch
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")
VOCAB_ALIGNMENTS = ("error", "truncate")


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


def check_divergence(divergence: str) -> str:
    """Return ``divergence`` if it is one of :data:`DIVERGENCES`, else raise naming the choices."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    return divergence


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float if it is strictly between 0 and 1 (the JSD's mixture weight)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta < 1.0:
        raise ValueError(
            f"beta must be strictly between 0 and 1 for divergence='jsd', got {beta!r}; beta=0 and beta=1 make "
            "the JSD vanish: use divergence='forward_kl' or divergence='reverse_kl' for those ends"
        )
    return float(beta)


class CheckedAttribute:
    """An attribute whose every assignment goes through ``check`` (a schedule may set it during training).

    Example:
        >>> class Loss:
        ...     temperature = CheckedAttribute(check_temperature, "Softmax temperature.")
        >>> loss = Loss()
        >>> loss.temperature = 2
        >>> loss.temperature
        2.0
    """

    def __init__(self, check: Callable[[Any], Any], doc: str = ""):
        self.check = check
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.storage = f"_{name}"

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        return self if instance is None else getattr(instance, self.storage)

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(instance, self.storage, self.check(value))


def check_chunk_size(chunk_size: Optional[int]) -> Optional[int]:
    """Return ``chunk_size`` if it is ``None`` or a positive integer, else raise naming it."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size


def check_vocab_alignment(vocab_alignment: str) -> str:
    """Return ``vocab_alignment`` if it is one of :data:`VOCAB_ALIGNMENTS`, else raise naming the choices."""
    if vocab_alignment not in VOCAB_ALIGNMENTS:
        raise ValueError(f"vocab_alignment must be one of {', '.join(VOCAB_ALIGNMENTS)}, got {vocab_alignment!r}")
    return vocab_alignment


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: bf16/fp16 lose the small soft-loss gradient ``q - p``; float64 stays."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def counted_rows(positions_shape: torch.Size, mask: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    """Flat indices of the counted positions, or ``None`` when all count.

    Raises:
        TypeError: if ``mask`` is not boolean.
        ValueError: if ``mask`` does not have the positions' shape.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != positions_shape:
        raise ValueError(
            f"mask must have the logits' shape without the class dimension, {tuple(positions_shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask.reshape(-1).nonzero().squeeze(-1).to(device)


def normalise(total: Tensor, count: Union[int, Tensor], num_positions: Optional[Union[int, float, Tensor]]) -> Tensor:
    """``total / num_positions`` when given (the count of a larger whole), else ``total / count`` (at least 1)."""
    if num_positions is None:
        return total / (count.clamp(min=1) if isinstance(count, Tensor) else max(count, 1))
    if isinstance(num_positions, Tensor):
        return total / num_positions.to(total.dtype).clamp(min=1)
    if isinstance(num_positions, bool) or not isinstance(num_positions, (int, float)) or not num_positions > 0:
        raise ValueError(f"num_positions must be a number > 0 (a count of positions), got {num_positions!r}")
    return total / num_positions
