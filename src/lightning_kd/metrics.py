"""Evaluation metrics shared by the modules: one set of torchmetrics objects per stage."""

from __future__ import annotations

from typing import Iterable

from torch import nn
from torchmetrics import MeanMetric

__all__ = ["ResetMetricsOnEvaluationStart", "stage_metrics"]


def stage_metrics(names: Iterable[str], stages: Iterable[str] = ("val", "test")) -> nn.ModuleDict:
    """Build ``{stage: {name: MeanMetric}}``.

    Every metric is an average of per-sample values (accuracy is the mean of "prediction is
    right"), weighted by the number of samples, so it is exact over the whole dataset and is
    reduced across processes by torchmetrics (sum and count), not averaged per rank.

    Example:
        >>> metrics = stage_metrics(["acc", "loss"])
        >>> sorted(metrics["val"])
        ['acc', 'loss']
    """
    names = list(names)
    return nn.ModuleDict({stage: nn.ModuleDict({name: MeanMetric() for name in names}) for stage in stages})


class ResetMetricsOnEvaluationStart:
    """Mixin for a LightningModule with ``self.metrics = stage_metrics(...)``.

    Each validation or test epoch starts from zero, whatever an earlier loop left behind (a
    sanity check, or the worker processes of ``ddp_spawn``, whose state comes back to the main one).
    """

    metrics: nn.ModuleDict

    def _reset_metrics(self, stage: str) -> None:
        for metric in self.metrics[stage].values():
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test")
