"""``AlphaSchedule``: change the weight of the soft term during training."""

from __future__ import annotations

from lightning_kd.callbacks.schedule import ParameterSchedule
from lightning_kd.losses import check_alpha

__all__ = ["AlphaSchedule"]


class AlphaSchedule(ParameterSchedule):
    """Set ``alpha``, the weight of the SOFT term of the module's ``DistillationLoss``, from a schedule.

    The module logs the value in use as ``train/alpha``. Arguments as for
    :class:`~lightning_kd.callbacks.TemperatureSchedule`; values must lie in ``[0, 1]``.

    Example:
        >>> schedule = AlphaSchedule(start=0.9, end=0.1, kind="cosine", duration=2)
        >>> [round(schedule.value_at(epoch), 2) for epoch in range(3)]
        [0.9, 0.5, 0.1]
    """

    attribute = "alpha"

    @staticmethod
    def check(value: float) -> float:
        return check_alpha(value)
