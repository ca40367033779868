"""``ParameterSchedule``: the base of the callbacks that change a loss setting during training.

A schedule maps training progress ``p`` in ``[0, 1]`` to a value between ``start`` and ``end``.
Progress is counted in epochs or optimizer steps; ``p = index / duration``, clamped to 1, so
the first epoch (or step) uses ``start`` and epoch (or step) ``duration`` onwards uses ``end``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from lightning_kd.checks import check_positive_int
from lightning_kd.distillable import require_distillable

__all__ = ["INTERVALS", "KINDS", "ParameterSchedule", "schedule_value"]

KINDS = ("constant", "linear", "cosine", "step")
INTERVALS = ("epoch", "step")


def schedule_value(
    kind: str, start: float, end: float, index: int, duration: int, milestones: Sequence[int] = ()
) -> float:
    """The value of a schedule at epoch or step ``index``.

    Args:
        kind: ``"constant"`` (always ``start``), ``"linear"``, ``"cosine"`` (half a cosine,
            flat at both ends), or ``"step"`` (``start`` until the first milestone, then equal
            stairs that reach ``end`` at the last milestone).
        start: Value at index 0.
        end: Value from index ``duration`` on (``"step"``: from the last milestone on).
        index: The current epoch or optimizer step, from 0.
        duration: Number of epochs or steps over which the value goes from ``start`` to ``end``.
        milestones: Increasing indices at which a ``"step"`` schedule moves down its stairs.

    Example:
        >>> schedule_value("linear", 8.0, 2.0, index=5, duration=10)
        5.0
        >>> [schedule_value("step", 8.0, 2.0, i, 10, milestones=[2, 4, 6]) for i in range(0, 8, 2)]
        [8.0, 6.0, 4.0, 2.0]
    """
    if kind == "constant":
        return float(start)
    if kind == "step":
        passed = sum(1 for milestone in milestones if index >= milestone)
        return float(start + (end - start) * passed / len(milestones))
    progress = min(max(index, 0) / max(duration, 1), 1.0)
    if kind == "linear":
        return float(start + (end - start) * progress)
    if kind == "cosine":
        return float(end + (start - end) * (1 + math.cos(math.pi * progress)) / 2)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


class ParameterSchedule(L.Callback):
    """Set ``pl_module.loss.<attribute>`` from a schedule before each training epoch or step.

    Subclasses name the attribute and check its values. The module logs the value in use as
    ``train/<attribute>``. Validation, test and prediction do not read it.

    The state (the resolved duration and the value last set) is saved in checkpoints, so a
    resumed run continues the same schedule even if ``max_epochs`` changed.
    """

    attribute: str

    def __init__(
        self,
        start: float,
        end: Optional[float] = None,
        kind: str = "linear",
        interval: str = "epoch",
        duration: Optional[int] = None,
        milestones: Optional[Sequence[int]] = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if interval not in INTERVALS:
            raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
        check_positive_int("duration", duration, allow_none=True)
        self.start = self.check(start)
        self.end = self.start if end is None else self.check(end)
        self.kind = kind
        self.interval = interval
        self.duration = duration
        self.milestones = self._check_milestones(kind, milestones)
        self.value: Optional[float] = None
        self._fit_duration: Optional[int] = None  # `duration`, or the fit's length when it is None

    @staticmethod
    def check(value: float) -> float:
        """Validate one value of the schedule (overridden by subclasses)."""
        return float(value)

    @staticmethod
    def _check_milestones(kind: str, milestones: Optional[Sequence[int]]) -> tuple[int, ...]:
        if kind != "step":
            if milestones:
                raise ValueError(f"milestones are only used by kind='step', got kind={kind!r}")
            return ()
        milestones = tuple(milestones or ())
        if not milestones or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
            raise ValueError(f"kind='step' needs milestones: increasing positive integers, got {milestones!r}")
        if list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {milestones!r}")
        return milestones

    @property
    def state_key(self) -> str:
        return self._generate_state_key(attribute=self.attribute)

    def value_at(self, index: int) -> float:
        """The scheduled value at epoch or step ``index`` (needs ``duration`` set or resolved)."""
        duration = self._fit_duration or self.duration or 1
        return schedule_value(self.kind, self.start, self.end, index, duration, self.milestones)

    # --- hooks ------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        loss = require_distillable(type(self).__name__, pl_module).loss
        if not hasattr(loss, self.attribute):
            raise TypeError(
                f"{type(self).__name__} sets `{self.attribute}` on the module's `loss`, but "
                f"{type(pl_module).__name__}.loss ({type(loss).__name__}) has no such attribute; "
                "use it with a DistillationModule whose loss is a DistillationLoss"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fit_duration is None:  # not restored from a checkpoint
            self._fit_duration = self.duration
            if self._fit_duration is None and self.kind in ("linear", "cosine"):
                self._fit_duration = self._default_duration(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._fit_duration = None

    def _default_duration(self, trainer: L.Trainer) -> int:
        """The last epoch (or step) of the fit: the schedule reaches ``end`` when training ends."""
        if self.interval == "epoch":
            if trainer.max_epochs is None or trainer.max_epochs < 0:
                raise ValueError(
                    f"{type(self).__name__}: the trainer has no max_epochs, so the schedule cannot end with "
                    "training; pass duration= (in epochs)"
                )
            return max(trainer.max_epochs - 1, 1)
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                f"{type(self).__name__}: the number of training steps is unknown, so the schedule cannot end "
                "with training; pass duration= (in steps)"
            )
        return max(int(total) - 1, 1)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(pl_module, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._apply(pl_module, trainer.global_step)

    def _apply(self, pl_module: L.LightningModule, index: int) -> None:
        self.value = self.value_at(index)
        setattr(pl_module.loss, self.attribute, self.value)

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "kind": self.kind,
            "interval": self.interval,
            "duration": self._fit_duration,
            "milestones": list(self.milestones),
            "value": self.value,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        settings = ("start", "end", "kind", "interval", "milestones")
        saved = {key: state_dict.get(key) for key in settings}
        current = {key: self.state_dict()[key] for key in settings}
        if saved != current:
            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint's schedule {saved} differs from this one {current}; "
                "continuing with this one"
            )
            return
        # The saved length, not one from this trainer's max_epochs: the schedule continues unchanged.
        self._fit_duration = state_dict.get("duration")
        self.value = state_dict.get("value")
