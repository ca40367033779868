"""``DistillationModule``: trains a student to imitate a frozen teacher."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from lightning_kd.batch import Batch, split_batch
from lightning_kd.checkpoint import TEACHER_PREFIX
from lightning_kd.checks import check_positive_int
from lightning_kd.fingerprint import module_fingerprint
from lightning_kd.losses import DistillationLoss, hard_target_loss, soft_target_loss
from lightning_kd.metrics import ResetMetricsOnEvaluationStart, loggers_write_this_step, stage_metrics
from lightning_kd.optim import OptimizerFactory, SchedulerFactory, check_factory, configure_optimizers

__all__ = ["DistillationModule", "check_module", "infer_num_classes"]

TEACHER_FINGERPRINT_KEY = "teacher_fingerprint"


def check_module(name: str, value: Any) -> nn.Module:
    """Return ``value`` if it is an ``nn.Module``, else raise a ``TypeError`` naming it."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}: {value!r:.80}")
    return value


def infer_num_classes(module: L.LightningModule, logits: Tensor) -> None:
    """Set ``module.num_classes`` from the first logits seen, or check them against it."""
    found = logits.shape[-1]
    if module.num_classes is None:
        module.num_classes = found
        module.hparams["num_classes"] = found
    elif found != module.num_classes:
        raise ValueError(
            f"expected logits with num_classes={module.num_classes} classes, got shape {tuple(logits.shape)}"
        )


class DistillationModule(ResetMetricsOnEvaluationStart, L.LightningModule):
    """Knowledge distillation of a frozen ``teacher`` into a trainable ``student``.

    Training minimises ``loss(student_logits, teacher_logits, y)``; by default a
    :class:`~lightning_kd.losses.DistillationLoss` (``alpha * T**2 * KL_T + (1 - alpha) * CE``).
    Validation, test and prediction use the student at ``T = 1``: the temperature of the loss
    never changes a metric or a prediction.

    The teacher is frozen: ``requires_grad`` is off, its forward runs under ``torch.no_grad()``,
    it stays in eval mode whatever the trainer does (``train()`` is overridden), and its
    parameters never reach the optimizer. Checkpoints hold the student only; pass the teacher
    back in when loading one.

    Batches are ``(x, y)``, ``(x,)`` (unlabeled, needs ``alpha = 1``), or a dict with ``"x"`` and
    optionally ``"y"`` and ``"teacher_logits"`` (precomputed teacher outputs skip the teacher).

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
        super().__init__()
        self.student = check_module("student", student)
        self.teacher = check_module("teacher", teacher)
        if teacher is student:
            raise ValueError("teacher and student must be different modules, got the same object twice")
        self.loss = DistillationLoss() if loss is None else loss
        if not callable(self.loss):
            raise TypeError(f"loss must be callable (e.g. a DistillationLoss), got {type(self.loss).__name__}")
        check_factory("optimizer", optimizer, "the student's parameters")
        check_factory("lr_scheduler", lr_scheduler, "the optimizer")
        check_positive_int("num_classes", num_classes, allow_none=True)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.num_classes = num_classes

        self.teacher.requires_grad_(False)
        self.teacher.eval()
        # Set by the CacheTeacherOutputs callback: training steps read the teacher's logits from
        # it by sample index instead of running the teacher.
        self.teacher_cache: Optional[Any] = None
        self._teacher_fingerprint: Optional[str] = None
        self.metrics = stage_metrics(["loss", "acc", "teacher_acc", "teacher_agreement", "kl"])
        # Primitives only: checkpoints must load with torch.load(weights_only=True).
        hparams: dict[str, Any] = {
            "num_classes": num_classes,
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        }
        if isinstance(self.loss, DistillationLoss):
            hparams.update(self.loss.hparams())
        self.save_hyperparameters(hparams)

    # --- teacher handling -------------------------------------------------------------------

    def train(self, mode: bool = True) -> DistillationModule:
        """Set the student's mode; the teacher stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.inference_mode()
    def teacher_logits(self, x: Any) -> Tensor:
        """The frozen teacher's logits for ``x``, with no autograd graph."""
        return self.teacher(x)

    def _teacher_logits_for(self, batch: Batch, cached: bool = False) -> Tensor:
        """Precomputed logits from the batch, from the cache (``cached``, training only), or the teacher's."""
        if batch.teacher_logits is not None:
            return batch.teacher_logits
        if cached and self.teacher_cache is not None and batch.index is not None:
            return self.teacher_cache.lookup(batch.index, device=self.device)
        return self.teacher_logits(batch.x)

    def on_fit_start(self) -> None:
        self._teacher_fingerprint = None  # recomputed for this fit's checkpoints
        self._fit_start_fingerprint = self.teacher_fingerprint()
        # Lightning warns about modules in eval mode at the start of training; for the frozen
        # teacher that is intended. Match the teacher's exact module count so that a student
        # left in eval mode by mistake still gets the warning.
        count = sum(1 for _ in self.teacher.modules())
        warnings.filterwarnings(
            "ignore",
            message=rf"Found {count} module\(s\) in eval mode at the start of training",
            category=PossibleUserWarning,
        )

    def on_fit_end(self) -> None:
        """Check, on every rank, that the fit left the teacher untouched and in eval mode."""
        if self.teacher.training or any(m.training for m in self.teacher.modules()):
            raise RuntimeError("the teacher was switched to train mode during fit; it must stay in eval mode")
        if module_fingerprint(self.teacher) != self._fit_start_fingerprint:
            raise RuntimeError("the teacher's weights or buffers changed during fit; they must stay frozen")

    # --- steps ------------------------------------------------------------------------------

    def forward(self, x: Any) -> Tensor:
        """The student's logits at ``T = 1``."""
        return self.student(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Return the loss, and the detached logits and targets for callbacks' ``outputs``."""
        parts = split_batch(batch)
        student_logits = self.student(parts.x)
        infer_num_classes(self, student_logits)
        teacher_logits = self._teacher_logits_for(parts, cached=True)
        out = self.loss(student_logits, teacher_logits, parts.y)
        if not torch.isfinite(out.total):
            raise FloatingPointError(self._non_finite_report(batch_idx, student_logits, teacher_logits, out))
        if loggers_write_this_step(self):
            self._log_training_step(out, batch_size=student_logits.shape[0])
        return {
            "loss": out.total,
            "student_logits": student_logits.detach(),
            "teacher_logits": teacher_logits,
            "targets": parts.y,
        }

    def _log_training_step(self, out: Any, batch_size: int) -> None:
        logs = {"train/loss": out.total, "train/soft_loss": out.soft}
        if out.hard is not None:
            logs["train/hard_loss"] = out.hard
        self.log_dict(logs, batch_size=batch_size, prog_bar=False)
        for name in ("temperature", "alpha"):  # the values in use, after any schedule set them
            value = getattr(self.loss, name, None)
            if value is not None:
                self.log(f"train/{name}", float(value), batch_size=batch_size)

    def _non_finite_report(self, batch_idx: int, student_logits: Tensor, teacher_logits: Tensor, out: Any) -> str:
        parts = [
            f"{name} is not finite"
            for name, value in (
                ("teacher logits", teacher_logits),
                ("student logits", student_logits),
                ("soft loss", out.soft),
                ("hard loss", out.hard),
            )
            if value is not None and not torch.isfinite(value).all()
        ]
        return (
            f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}): {', '.join(parts)}. Training stopped; the last checkpoint written before "
            "this step is intact (lower the learning rate, or check the inputs and the teacher)."
        )

    def _evaluate(self, batch: Any, stage: str) -> dict[str, Any]:
        parts = split_batch(batch)
        student_logits = self.student(parts.x)
        infer_num_classes(self, student_logits)
        teacher_logits = self._teacher_logits_for(parts)
        metrics = self.metrics[stage]
        batch_size = student_logits.shape[0]
        preds = student_logits.argmax(dim=-1)
        metrics["teacher_agreement"].update((preds == teacher_logits.argmax(dim=-1)).float())
        metrics["kl"].update(soft_target_loss(student_logits, teacher_logits, temperature=1.0), weight=batch_size)
        names = ["teacher_agreement", "kl"]
        if parts.y is not None:
            metrics["acc"].update((preds == parts.y).float())
            metrics["teacher_acc"].update((teacher_logits.argmax(dim=-1) == parts.y).float())
            metrics["loss"].update(hard_target_loss(student_logits, parts.y), weight=batch_size)
            names += ["acc", "teacher_acc", "loss"]
        for name in names:
            self.log(f"{stage}/{name}", metrics[name], on_step=False, on_epoch=True, batch_size=batch_size)
        return {"student_logits": student_logits, "teacher_logits": teacher_logits, "targets": parts.y}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Update the ``val`` metrics; return the logits (``T = 1``) and targets for callbacks."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Update the ``test`` metrics; return the logits (``T = 1``) and targets for callbacks."""
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Return ``{"probs": softmax(student_logits), "preds": argmax}`` at ``T = 1``."""
        logits = self.student(split_batch(batch).x)
        return {"probs": F.softmax(logits.float(), dim=-1), "preds": logits.argmax(dim=-1)}

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.student.parameters(), self.optimizer_factory, self.lr_scheduler_factory)

    # --- checkpoints ------------------------------------------------------------------------

    def teacher_fingerprint(self) -> str:
        """SHA-256 of the teacher's weights, computed once per fit (the teacher is frozen)."""
        if self._teacher_fingerprint is None:
            self._teacher_fingerprint = module_fingerprint(self.teacher)
        return self._teacher_fingerprint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the teacher's weights (small checkpoints that do not leak it); keep its fingerprint."""
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(TEACHER_PREFIX)]:
            del state[key]
        checkpoint[TEACHER_FINGERPRINT_KEY] = self.teacher_fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the teacher passed in is the one the checkpoint was trained with; fill it in."""
        self._teacher_fingerprint = None  # the teacher may have been loaded since the last fit
        saved = checkpoint.get(TEACHER_FINGERPRINT_KEY)
        if saved is not None and saved != self.teacher_fingerprint():
            raise ValueError(
                f"the checkpoint was trained with a different teacher (fingerprint {saved[:16]}) than the one "
                f"passed in (fingerprint {self.teacher_fingerprint()[:16]}); pass the original teacher to resume"
            )
        state = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)
