"""``TemperatureSchedule``: change the distillation temperature during training."""

from __future__ import annotations

from lightning_kd.callbacks.schedule import ParameterSchedule
from lightning_kd.losses import check_temperature

__all__ = ["TemperatureSchedule"]


class TemperatureSchedule(ParameterSchedule):
    """Set the temperature ``T`` of the module's ``DistillationLoss`` from a schedule.

    The soft term's ``T**2`` factor follows the current ``T``, because the loss reads it on
    every call. Validation, test and prediction stay at ``T = 1`` whatever the schedule. The
    module logs the value in use as ``train/temperature``.

    Args:
        start: Temperature at the first epoch (or step); finite and ``> 0``.
        end: Temperature at the end; ``start`` when ``None``.
        kind: ``"constant"``, ``"linear"``, ``"cosine"`` or ``"step"``.
        interval: ``"epoch"`` or ``"step"`` (optimizer steps).
        duration: Epochs or steps from ``start`` to ``end``; by default the whole fit
            (``max_epochs - 1`` epochs, or the trainer's estimated number of steps minus one).
        milestones: For ``kind="step"``: increasing epochs or steps at which ``T`` moves in equal
            stairs from ``start`` to ``end``.

    Example:
        >>> schedule = TemperatureSchedule(start=8.0, end=2.0, kind="linear", duration=4)
        >>> [schedule.value_at(epoch) for epoch in range(6)]
        [8.0, 6.5, 5.0, 3.5, 2.0, 2.0]
    """

    attribute = "temperature"

    @staticmethod
    def check(value: float) -> float:
        return check_temperature(value)
