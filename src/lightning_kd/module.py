"""``DistillationModule``: trains a classifier student to imitate a frozen teacher."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from lightning_kd.base import infer_num_classes
from lightning_kd.batch import split_batch
from lightning_kd.contract import StepOutput
from lightning_kd.distillable import NON_FINITE_PARTS, DistillableModule
from lightning_kd.losses import DistillationLoss, DKDLoss, soft_target_loss
from lightning_kd.metrics import loggers_write_this_step, stage_metrics
from lightning_kd.optim import OptimizerFactory, SchedulerFactory

__all__ = ["DistillationModule"]


class DistillationModule(DistillableModule):
    """Knowledge distillation of a frozen ``teacher`` into a trainable ``student``.

    Training minimises ``loss(student_logits, teacher_logits, y)``; by default a
    :class:`~lightning_kd.losses.DistillationLoss` (``alpha * T**2 * KL_T + (1 - alpha) * CE``).
    Any callable returning an object with ``total``, ``soft`` and ``hard`` works: the teacher's
    logits are ordinary tensors without a graph, so a custom loss may use them freely.
    Validation, test and prediction use the student at ``T = 1``: the temperature of the loss
    never changes a metric or a prediction. The teacher is frozen (see
    :class:`~lightning_kd.distillable.DistillableModule`).

    Batches are ``(x, y)``, ``(x,)`` (unlabeled, needs ``alpha = 1``), or a dict with ``"x"`` and
    optionally ``"y"``, ``"teacher_logits"`` (precomputed teacher outputs skip the teacher) and
    ``"index"`` (the key of the teacher-output store).

    Logged metrics: ``train/loss``, ``train/soft_loss``, ``train/hard_loss``,
    ``train/temperature``, ``train/alpha``, on the steps the loggers write
    (``Trainer(log_every_n_steps=...)``); and for ``val`` and ``test``: ``loss`` (student cross-entropy), ``acc``,
    ``teacher_acc`` (the teacher's accuracy, for reference), ``teacher_agreement`` (same argmax as
    the teacher) and ``kl`` (``KL(teacher || student)`` at ``T = 1``).

    Args:
        student: The network to train; returns logits ``[B, C]``.
        teacher: The trained network to imitate; returns logits of the same shape.
        loss: Callable ``(student_logits, teacher_logits, targets)`` returning an object with
            ``total``, ``soft`` and ``hard``; ``DistillationLoss()`` when ``None``.
        optimizer: Callable taking parameters, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``;
            Adam with ``lr=1e-3`` when ``None``. Receives the student's parameters only.
        lr_scheduler: Optional callable taking the optimizer.
        num_classes: Number of classes; inferred from the first batch when ``None``.

    Example:
        >>> import lightning as L, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_kd import DistillationLoss, DistillationModule
        >>> from lightning_kd.models import MLP
        >>> module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(32,)),
        ...                             loss=DistillationLoss(temperature=2.0, alpha=0.5))
        >>> data = DataLoader(TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,))), batch_size=8)
        >>> trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, data, data)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
        ['val/acc', 'val/kl', 'val/loss', 'val/teacher_acc', 'val/teacher_agreement']
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: Optional[nn.Module] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        num_classes: Optional[int] = None,
    ):
        super().__init__(
            student,
            teacher,
            DistillationLoss() if loss is None else loss,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            num_classes=num_classes,
        )
        self.metrics = stage_metrics(["loss", "acc", "teacher_acc", "teacher_agreement", "kl"])
        # Primitives only: checkpoints must load with torch.load(weights_only=True).
        hparams: dict[str, Any] = {
            "num_classes": num_classes,
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        }
        if isinstance(self.loss, (DistillationLoss, DKDLoss)):
            hparams.update(self.loss.hparams())
        self.save_hyperparameters(hparams)

    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Return the loss, and the detached logits and targets for callbacks."""
        parts = split_batch(batch)
        student_logits = self(parts.x)
        infer_num_classes(self, student_logits)
        teacher_logits = self.teacher_logits_for(parts, stored=True)
        out = self.loss(student_logits, teacher_logits, parts.y)
        self.check_finite(
            batch_idx,
            out.total,
            dict(zip(NON_FINITE_PARTS, (teacher_logits, student_logits, out.soft, out.hard), strict=True)),
        )
        if loggers_write_this_step(self):
            self._log_training_step(out, batch_size=student_logits.shape[0])
        return StepOutput(
            loss=out.total, student_logits=student_logits.detach(), teacher_logits=teacher_logits, targets=parts.y
        )

    def _log_training_step(self, out: Any, batch_size: int) -> None:
        logs = {"train/loss": out.total, "train/soft_loss": out.soft}
        if out.hard is not None:
            logs["train/hard_loss"] = out.hard
        for name, value in (getattr(out, "terms", None) or {}).items():  # e.g. DKD's tckd and nckd
            logs[f"train/{name}"] = value
        self.log_dict(logs, batch_size=batch_size, prog_bar=False)
        for name in ("temperature", "alpha", "warmup"):  # the values in use, after any schedule set them
            value = getattr(self.loss, name, None)
            if value is not None:
                self.log(f"train/{name}", float(value), batch_size=batch_size)

    def _evaluate(self, batch: Any, stage: str) -> StepOutput:
        parts = split_batch(batch)
        student_logits = self(parts.x)
        infer_num_classes(self, student_logits)
        teacher_logits = self.teacher_logits_for(parts)
        batch_size = student_logits.shape[0]
        teacher_preds = teacher_logits.argmax(dim=-1)
        values = {
            "teacher_agreement": ((student_logits.argmax(dim=-1) == teacher_preds).float(), None),
            "kl": (soft_target_loss(student_logits, teacher_logits, temperature=1.0), batch_size),
        }
        if parts.y is not None:
            values.update(self.supervised_values(student_logits, parts.y))
            values["teacher_acc"] = ((teacher_preds == parts.y).float(), None)
        self.update_and_log(stage, values, batch_size)
        return StepOutput(student_logits=student_logits, teacher_logits=teacher_logits, targets=parts.y)

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Update the ``val`` metrics; return the logits (``T = 1``) and targets for callbacks."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Update the ``test`` metrics; return the logits (``T = 1``) and targets for callbacks."""
        return self._evaluate(batch, "test")
