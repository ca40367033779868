"""``ProgressLog``: one log line per validation, for runs without a progress bar (logs, CI, sweeps)."""

from __future__ import annotations

import logging
import time
from typing import Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["ProgressLog"]

log = logging.getLogger(__name__)


class ProgressLog(L.Callback):
    """Log the step, the elapsed time and the validation metrics after each validation.

    ``kd-train`` adds it when the progress bar is off (output to a file), so that a long teacher
    training says how far it is.

    Args:
        prefix: What is being trained (e.g. ``"teacher"``), at the start of each line.

    Example:
        >>> ProgressLog("teacher").prefix
        'teacher'
    """

    def __init__(self, prefix: str = "training"):
        self.prefix = prefix
        self._started: Optional[float] = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._started is None:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        step = f"step {trainer.global_step}" + (f"/{total}" if total else "") + f", epoch {trainer.current_epoch}"
        metrics = ", ".join(
            f"{name} {float(value):.4g}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("val/") and value.numel() == 1
        )
        log.info("%s: %s, %.0f s: %s", self.prefix, step, time.monotonic() - self._started, metrics)
