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
