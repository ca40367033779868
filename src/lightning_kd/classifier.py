"""``ClassifierModule``: trains one network with plain cross-entropy.

Used to train a teacher, and to train a student from scratch as the baseline that
distillation must beat. It shares the batch convention, optimizer factories and metric names
of :class:`~lightning_kd.module.DistillationModule`.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.batch import split_batch
from lightning_kd.losses import hard_target_loss
from lightning_kd.metrics import ResetMetricsOnEvaluationStart, loggers_write_this_step, stage_metrics
from lightning_kd.module import check_module, infer_num_classes
from lightning_kd.optim import OptimizerFactory, SchedulerFactory, check_factory, configure_optimizers

__all__ = ["ClassifierModule"]


class ClassifierModule(ResetMetricsOnEvaluationStart, L.LightningModule):
    """Supervised training of ``model`` with cross-entropy.

    Logs ``train/loss``, and ``loss`` and ``acc`` for ``val`` and ``test``. Checkpoints keep the
    weights under ``model.``.

    Args:
        model: The network; returns logits ``[B, C]``.
        optimizer: Callable taking parameters; Adam with ``lr=1e-3`` when ``None``.
        lr_scheduler: Optional callable taking the optimizer.
        num_classes: Number of classes; inferred from the first batch when ``None``.

    Example:
        >>> import torch
        >>> from lightning_kd.models import MLP
        >>> ClassifierModule(MLP(64, 10))(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        self.model = check_module("model", model)
        check_factory("optimizer", optimizer, "the model's parameters")
        check_factory("lr_scheduler", lr_scheduler, "the optimizer")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.num_classes = num_classes
        self.metrics = stage_metrics(["loss", "acc"])
        self.save_hyperparameters(
            {"num_classes": num_classes, "model_class": f"{type(model).__module__}.{type(model).__qualname__}"}
        )

    def forward(self, x: Any) -> Tensor:
        """The model's logits."""
        return self.model(x)

    def _labeled(self, batch: Any) -> tuple[Tensor, Tensor]:
        parts = split_batch(batch)
        if parts.y is None:
            raise ValueError("ClassifierModule needs labeled batches (x, y); got a batch without labels")
        logits = self.model(parts.x)
        infer_num_classes(self, logits)
        return logits, parts.y

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        logits, y = self._labeled(batch)
        loss = hard_target_loss(logits, y)
        if loggers_write_this_step(self):
            self.log("train/loss", loss, batch_size=logits.shape[0])
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        logits, y = self._labeled(batch)
        metrics = self.metrics[stage]
        metrics["acc"].update((logits.argmax(dim=-1) == y).float())
        metrics["loss"].update(hard_target_loss(logits, y), weight=logits.shape[0])
        for name in ("acc", "loss"):
            self.log(f"{stage}/{name}", metrics[name], on_step=False, on_epoch=True, batch_size=logits.shape[0])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Return ``{"probs": softmax(logits), "preds": argmax}``."""
        logits = self.model(split_batch(batch).x)
        return {"probs": F.softmax(logits.float(), dim=-1), "preds": logits.argmax(dim=-1)}

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.model.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
