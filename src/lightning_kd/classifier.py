"""``ClassifierModule``: trains one network with plain cross-entropy.

Used to train a teacher, and to train a student from scratch as the baseline that
distillation must beat. It shares the batch convention, optimizer factories, metric names and
step outputs of :class:`~lightning_kd.module.DistillationModule` (see
:class:`~lightning_kd.base.LightningKDModule`).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from torch import Tensor, nn

from lightning_kd.base import LightningKDModule, check_module, infer_num_classes
from lightning_kd.batch import forward_logits, split_batch
from lightning_kd.contract import StepOutput
from lightning_kd.losses import hard_target_loss
from lightning_kd.metrics import loggers_write_this_step, stage_metrics
from lightning_kd.optim import OptimizerFactory, SchedulerFactory

__all__ = ["ClassifierModule"]


class ClassifierModule(LightningKDModule):
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
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, num_classes=num_classes)
        self.model = check_module("model", model)
        self.metrics = stage_metrics(["loss", "acc"])
        self.save_hyperparameters(
            {"num_classes": num_classes, "model_class": f"{type(model).__module__}.{type(model).__qualname__}"}
        )

    def forward(self, x: Any) -> Tensor:
        """The model's logits."""
        return forward_logits(self.model, x)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def _labeled(self, batch: Any) -> tuple[Tensor, Tensor]:
        parts = split_batch(batch)
        if parts.y is None:
            raise ValueError("ClassifierModule needs labeled batches (x, y); got a batch without labels")
        logits = self(parts.x)
        infer_num_classes(self, logits)
        return logits, parts.y

    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        logits, y = self._labeled(batch)
        loss = hard_target_loss(logits, y)
        if loggers_write_this_step(self):
            self.log("train/loss", loss, batch_size=logits.shape[0])
        return StepOutput(loss=loss, student_logits=logits.detach(), targets=y)

    def _evaluate(self, batch: Any, stage: str) -> StepOutput:
        logits, y = self._labeled(batch)
        self.update_and_log(stage, self.supervised_values(logits, y), logits.shape[0])
        return StepOutput(student_logits=logits, targets=y)

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        return self._evaluate(batch, "test")
