"""Evaluation metrics shared by the modules: one set of torchmetrics objects per stage."""

from __future__ import annotations

from typing import Iterable

from torch import nn
from torchmetrics import MeanMetric

__all__ = ["stage_metrics"]


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
