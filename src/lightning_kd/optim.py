"""Optimizer and learning-rate scheduler construction from user-supplied factories."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

__all__ = ["LRScheduler", "OptimizerFactory", "SchedulerFactory", "check_factory", "configure_optimizers"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

default_optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3)


class LRScheduler:
    """A learning-rate scheduler factory with Lightning's settings: ``interval``, ``frequency``, ``monitor``.

    Called with the optimizer, it returns the scheduler config dict that
    ``LightningModule.configure_optimizers`` returns; pass it as a module's ``lr_scheduler``.

    Args:
        scheduler: Callable taking the optimizer, e.g. ``partial(torch.optim.lr_scheduler.StepLR, step_size=10)``.
        interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        frequency: Step the scheduler every ``frequency`` intervals.
        monitor: The metric a ``ReduceLROnPlateau`` watches (``val/loss`` when ``None``).

    Example:
        >>> sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> config = LRScheduler(partial(torch.optim.lr_scheduler.StepLR, step_size=5), interval="step")(sgd)
        >>> type(config["scheduler"]).__name__, config["interval"]
        ('StepLR', 'step')
    """

    def __init__(
        self,
        scheduler: SchedulerFactory,
        interval: str = "epoch",
        frequency: int = 1,
        monitor: Optional[str] = None,
    ):
        check_factory("scheduler", scheduler, "the optimizer")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency must be a positive integer, got {frequency!r}")
        self.scheduler = scheduler
        self.interval = interval
        self.frequency = frequency
        self.monitor = monitor

    def __call__(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        config: dict[str, Any] = {
            "scheduler": self.scheduler(optimizer),
            "interval": self.interval,
            "frequency": self.frequency,
        }
        if self.monitor is not None:
            config["monitor"] = self.monitor
        return config


def check_factory(name: str, factory: Optional[Callable], expected: str) -> None:
    """Raise a ``TypeError`` if ``factory`` is neither ``None`` nor callable."""
    if factory is not None and not callable(factory):
        raise TypeError(f"{name} must be a callable that takes {expected}, got {factory!r}")


def configure_optimizers(
    parameters: Iterable[nn.Parameter],
    optimizer: Optional[OptimizerFactory] = None,
    lr_scheduler: Optional[SchedulerFactory] = None,
    monitor: str = "val/loss",
) -> Any:
    """Build what ``LightningModule.configure_optimizers`` returns.

    Args:
        parameters: The trainable parameters (the student's only, when distilling).
        optimizer: Callable taking the parameters, e.g. ``partial(torch.optim.SGD, lr=0.1)``;
            Adam with ``lr=1e-3`` when ``None``.
        lr_scheduler: Optional callable taking the optimizer. It may return a scheduler or a
            Lightning scheduler config dict (``{"scheduler": ..., "interval": "step"}``).
        monitor: Metric that ``ReduceLROnPlateau`` watches when none is given.

    Returns:
        An optimizer, or a dict with ``optimizer`` and ``lr_scheduler``.
    """
    optim = (optimizer or default_optimizer)(parameters)
    if not isinstance(optim, torch.optim.Optimizer):
        raise TypeError(f"optimizer factory must return a torch.optim.Optimizer, got {type(optim).__name__}")
    if lr_scheduler is None:
        return optim
    scheduler = lr_scheduler(optim)
    config = dict(scheduler) if isinstance(scheduler, dict) else {"scheduler": scheduler}
    if isinstance(config["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
        config.setdefault("monitor", monitor)
    return {"optimizer": optim, "lr_scheduler": config}
