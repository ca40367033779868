"""Argument checks shared by the constructors: fail early, naming the value and what was expected."""

from __future__ import annotations

from typing import Any

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is an integer >= 1 (or ``None`` when allowed).

    Example:
        >>> check_positive_int("batch_size", 0)
        Traceback (most recent call last):
        ValueError: batch_size must be a positive integer, got 0
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise a ``ValueError`` unless both held-out fractions are > 0 and leave a training part.

    Example:
        >>> check_split_fractions(0.6, 0.5)
        Traceback (most recent call last):
        ValueError: val_fraction and test_fraction must be > 0 with a sum < 1, got 0.6 and 0.5
    """
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be > 0 with a sum < 1, got {val_fraction} and {test_fraction}"
        )
