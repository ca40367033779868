"""Evaluation metrics shared by the modules: one set of torchmetrics objects per stage."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import lightning as L
from torch import nn
from torchmetrics import MeanMetric

__all__ = ["ExpMeanMetric", "ResetMetricsOnEvaluationStart", "loggers_write_this_step", "stage_metrics"]


def loggers_write_this_step(module: L.LightningModule) -> bool:
    """Whether Lightning passes the values logged in this training step to the loggers.

    Per-step ``train/`` values logged on other steps are dropped, and Lightning's ``self.log``
    costs about 1 ms a value on a CPU (Lightning 2.6), more than a small student's whole step:
    the modules skip it there. The decision is Lightning's own, read as its callbacks
    (``LearningRateMonitor``) read it. Outside a ``Trainer`` it is always ``True``.

    Example:
        >>> from lightning_kd import ClassifierModule
        >>> from lightning_kd.models import MLP
        >>> loggers_write_this_step(ClassifierModule(MLP(4, 2)))
        True
    """
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer
        return True
    return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)


class ExpMeanMetric(MeanMetric):
    """``exp`` of a weighted mean: perplexity from per-token negative log-likelihoods.

    Example:
        >>> import math, torch
        >>> ppl = ExpMeanMetric()
        >>> ppl.update(torch.tensor(math.log(4.0)), weight=10)
        >>> round(float(ppl.compute()), 4)
        4.0
    """

    def compute(self):
        return super().compute().exp()


def stage_metrics(
    names: Iterable[str],
    stages: Iterable[str] = ("val", "test"),
    kinds: Optional[Mapping[str, type[MeanMetric]]] = None,
) -> nn.ModuleDict:
    """Build ``{stage: {name: MeanMetric}}`` (``kinds[name]`` instead where given, e.g. :class:`ExpMeanMetric`).

    Every metric is an average of per-sample values (accuracy is the mean of "prediction is
    right"), weighted by the number of samples, so it is exact over the whole dataset and is
    reduced across processes by torchmetrics (sum and count), not averaged per rank.

    Example:
        >>> metrics = stage_metrics(["acc", "loss"])
        >>> sorted(metrics["val"])
        ['acc', 'loss']
    """
    names, kinds = list(names), kinds or {}
    return nn.ModuleDict(
        {stage: nn.ModuleDict({name: kinds.get(name, MeanMetric)() for name in names}) for stage in stages}
    )


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
