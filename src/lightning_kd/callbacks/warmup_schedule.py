"""``WarmupSchedule``: ramp a loss term in at the start of training (DKD's warm-up)."""

from __future__ import annotations

from lightning_kd.callbacks.schedule import ParameterSchedule

__all__ = ["WarmupSchedule"]


class WarmupSchedule(ParameterSchedule):
    """Set ``warmup``, the weight of the module loss's distillation term (``DKDLoss``), from a schedule.

    Decoupled KD's recipe ramps its term in linearly over the first 20 epochs:
    ``WarmupSchedule(start=0.0, end=1.0, duration=20)``; after ``duration`` the value stays at
    ``end``. The module logs the value in use as ``train/warmup``. Values must lie in ``[0, 1]``.

    Example:
        >>> schedule = WarmupSchedule(start=0.0, end=1.0, duration=4)
        >>> [schedule.value_at(epoch) for epoch in (0, 2, 4, 10)]
        [0.0, 0.5, 1.0, 1.0]
    """

    attribute = "warmup"

    @staticmethod
    def check(value: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"warmup must be a number in [0, 1], got {value!r}")
        return float(value)
