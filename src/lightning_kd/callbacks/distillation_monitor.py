"""``DistillationMonitor``: is distillation working? Calibration, soft-target entropy and gradient balance."""

from __future__ import annotations

import time
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassCalibrationError

from lightning_kd.checks import check_positive_int
from lightning_kd.contract import flat_positions, step_output
from lightning_kd.distillable import require_distillable
from lightning_kd.losses import hard_target_loss, soft_target_loss

__all__ = ["DistillationMonitor", "imbalance_message", "soft_target_entropy"]

COPY_KL = 1e-6  # KL(teacher || student) at T = 1 below which the student is a copy of the teacher
FITTED_CE = 1e-3  # cross-entropy below which the student fits the batch's labels


def soft_target_entropy(teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample entropy (nats) of the teacher's soft targets ``softmax(t / T)``.

    Example:
        >>> import math, torch
        >>> round(soft_target_entropy(torch.zeros(1, 4), 2.0).item(), 4) == round(math.log(4), 4)
        True
    """
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def imbalance_message(norms: dict, threshold: float, kl: float, cross_entropy: float) -> Optional[str]:
    """The warning for gradient norms more than ``threshold`` apart, or ``None`` when there is none.

    A term whose own loss is already about zero has nothing left to teach, and its gradient is
    rightly small: a student that copies the teacher (``kl``, KL at T = 1, below ``COPY_KL``),
    or one that fits the batch's labels (``cross_entropy`` below ``FITTED_CE``).

    Example:
        >>> norms = {"grad_norm_soft": 1e-4, "grad_norm_hard": 0.1, "grad_norm_ratio": 1e-3}
        >>> "T**2" in imbalance_message(norms, 100.0, kl=0.5, cross_entropy=1.2)
        True
        >>> imbalance_message(norms, 100.0, kl=0.0, cross_entropy=1.2) is None
        True
    """
    soft, hard, ratio = norms["grad_norm_soft"], norms["grad_norm_hard"], norms["grad_norm_ratio"]
    sizes = f"(soft {soft:.3g}, hard {hard:.3g})"
    if ratio < 1 / threshold and kl > COPY_KL:
        return (
            f"the hard term's gradient on the student logits is {1 / ratio:.0f}x the soft term's {sizes}: the "
            "soft targets are effectively switched off. If the soft loss is not multiplied by T**2, its "
            "gradient shrinks as 1/T**2: use lightning_kd.losses.soft_target_loss, which includes the factor. "
            "(Warned once.)"
        )
    if ratio > threshold and cross_entropy > FITTED_CE:
        return (
            f"the soft term's gradient on the student logits is {ratio:.0f}x the hard term's {sizes} while the "
            f"labels are not fitted (cross-entropy {cross_entropy:.3g}): the labels are effectively ignored. "
            "Check the loss's scaling (T**2 applied twice?) and alpha. (Warned once.)"
        )
    return None


class DistillationMonitor(L.Callback):
    """Log what shows whether distillation is working, for a ``DistillationModule``.

    At each validation (and test) epoch, at ``T = 1`` unless said otherwise:

    * ``{stage}/ece`` and ``{stage}/teacher_ece``: expected calibration error of the student and
      the teacher (torchmetrics, ``n_bins`` equal-width bins, L1), when the batches have labels;
    * ``{stage}/teacher_entropy``: entropy of the teacher's soft targets at the loss's current
      temperature (how much "dark knowledge" the targets carry; ``log C`` is uniform).

    The module itself logs the teacher-student top-1 agreement (``{stage}/teacher_agreement``)
    and ``KL(teacher || student)`` at ``T = 1`` (``{stage}/kl``); the monitor does not compute
    them twice.

    Every ``grad_every_n_steps`` optimizer steps it writes to the loggers the norm of the
    gradient that each term sends to the student's logits, ``train/grad_norm_soft`` and
    ``train/grad_norm_hard``, and ``train/grad_norm_ratio`` (soft / hard). The norms are of the
    terms as the loss defines them (the soft term includes ``T**2``), before ``alpha`` weights
    them: with ``T**2`` they stay comparable at any ``T``; without it the soft one shrinks as
    ``1 / T**2``. They are computed on the detached logits that ``training_step`` returns, so
    the network is not run again: the cost is one loss evaluation and backward on a
    ``[batch, classes]`` tensor. If one norm is more than ``imbalance_threshold`` times the
    other, a warning is given once (see :func:`imbalance_message`: not when the smaller term's own
    loss is already about zero, as for a student that copies the teacher or fits the labels).

    With intermediate-feature pairs (``DistillationModule(feature_pairs=...)``) it also writes
    ``train/grad_norm_feature/<pair log name>``: the norm of the gradient that each weighted feature
    term sends to the student's feature at its layer (from the detached features of the step: only
    the adapter and the feature loss run again). They are norms at other tensors than the logits,
    so compare them over time and with each other, not with the soft and hard ones.

    Args:
        grad_every_n_steps: Interval, in optimizer steps, of the gradient-norm measurement.
        n_bins: Number of bins of the calibration error.
        imbalance_threshold: Ratio of the two norms above which the warning is given.

    Example:
        >>> from lightning_kd.callbacks import DistillationMonitor
        >>> monitor = DistillationMonitor(grad_every_n_steps=50)
        >>> monitor.last_grad_norms is None
        True
    """

    def __init__(self, grad_every_n_steps: int = 50, n_bins: int = 15, imbalance_threshold: float = 100.0):
        check_positive_int("grad_every_n_steps", grad_every_n_steps)
        check_positive_int("n_bins", n_bins)
        if not imbalance_threshold > 1:
            raise ValueError(f"imbalance_threshold must be a ratio > 1, got {imbalance_threshold!r}")
        self.grad_every_n_steps = grad_every_n_steps
        self.n_bins = n_bins
        self.imbalance_threshold = float(imbalance_threshold)
        self.last_grad_norms: Optional[dict[str, float]] = None
        self.grad_norm_seconds = 0.0  # time spent measuring gradient norms, for the cost report
        self._warned = False
        self._last_step = -1
        self._metrics: Optional[nn.ModuleDict] = None

    # --- evaluation metrics -----------------------------------------------------------------

    def _stage_metrics(self, num_classes: int, device: torch.device) -> nn.ModuleDict:
        """The metrics, built on ``device`` at the first batch (the class count is known then)."""
        if self._metrics is None or self._metrics["ece"].num_classes != num_classes:
            self._metrics = nn.ModuleDict(
                {
                    "ece": MulticlassCalibrationError(num_classes, n_bins=self.n_bins, norm="l1"),
                    "teacher_ece": MulticlassCalibrationError(num_classes, n_bins=self.n_bins, norm="l1"),
                    "teacher_entropy": MeanMetric(),
                }
            ).to(device)
        return self._metrics

    def _epoch_start(self, pl_module: L.LightningModule) -> None:
        if self._metrics is not None:
            self._metrics.to(pl_module.device)  # once an epoch, not on every batch
            for metric in self._metrics.values():
                metric.reset()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_distillable(type(self).__name__, pl_module)

    def _batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any) -> None:
        output = step_output(outputs)
        if trainer.sanity_checking or output is None or output.get("teacher_logits") is None:
            return
        student, teacher, targets = flat_positions(output)
        metrics = self._stage_metrics(student.shape[-1], student.device)
        temperature = float(getattr(pl_module.loss, "temperature", 1.0))
        metrics["teacher_entropy"].update(soft_target_entropy(teacher, temperature))
        if targets is not None:
            labeled = targets != getattr(pl_module.loss, "ignore_index", -100)
            if labeled.any():
                metrics["ece"].update(student[labeled].float().softmax(-1), targets[labeled])
                metrics["teacher_ece"].update(teacher[labeled].float().softmax(-1), targets[labeled])

    def _epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or self._metrics is None:
            return
        for name, metric in self._metrics.items():
            if metric.update_called:  # compute() reduces across processes
                pl_module.log(f"{stage}/{name}", metric.compute(), on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start(pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_end(trainer, pl_module, outputs)

    # Test epochs are measured the same way; only the prefix of the logged names differs.
    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_end = on_validation_batch_end

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "test")

    # --- gradient balance -------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        output = step_output(outputs)
        if output is None or output.get("targets") is None or output.get("teacher_logits") is None:
            return  # an unlabeled batch has no hard term to compare with
        step = trainer.global_step  # already counts this batch's optimizer step
        if (step - 1) % self.grad_every_n_steps != 0 or step == self._last_step:  # steps 1, 1 + n, ...
            return
        self._last_step = step  # once per step, also with gradient accumulation
        started = time.perf_counter()
        student, teacher, targets = flat_positions(output)  # [B, C], or the counted tokens of [B, L, V]
        norms = self.grad_norms(pl_module.loss, student, teacher, targets)
        feature_grad_norms = getattr(pl_module, "feature_grad_norms", None)  # DistillationModule's feature pairs
        features = {} if feature_grad_norms is None else feature_grad_norms(output)
        self.grad_norm_seconds += time.perf_counter() - started
        if norms is None and not features:
            return
        norms = {**(norms or {}), **{f"grad_norm_feature/{name}": value for name, value in features.items()}}
        self.last_grad_norms = norms
        self._log_to_loggers(trainer, {f"train/{name}": value for name, value in norms.items()})
        if not self._warned and "grad_norm_ratio" in norms:
            message = imbalance_message(
                norms,
                self.imbalance_threshold,
                kl=float(soft_target_loss(student, teacher, 1.0)),
                cross_entropy=float(hard_target_loss(student, targets, getattr(pl_module.loss, "ignore_index", -100))),
            )
            if message:
                self._warned = True
                temperature = getattr(pl_module.loss, "temperature", None)
                rank_zero_warn(f"DistillationMonitor, step {trainer.global_step} (T={temperature}): {message}")

    @staticmethod
    def grad_norms(loss: Any, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Optional[dict]:
        """Norms of the gradients of the soft and hard terms of ``loss`` with respect to the student logits.

        Returns:
            ``{"grad_norm_soft", "grad_norm_hard", "grad_norm_ratio"}`` as floats, or ``None`` when
            the loss has no hard term for these targets.
        """
        with torch.enable_grad():
            logits = student_logits.detach().float().requires_grad_(True)
            out = loss(logits, teacher_logits.detach(), targets)
            if out.hard is None or not out.hard.requires_grad:
                return None
            soft_grad, hard_grad = (
                torch.autograd.grad(term, logits, retain_graph=True)[0] for term in (out.soft, out.hard)
            )
        soft, hard = soft_grad.norm().item(), hard_grad.norm().item()
        ratio = soft / hard if hard > 0 else float("inf")
        return {"grad_norm_soft": soft, "grad_norm_hard": hard, "grad_norm_ratio": ratio}

    @staticmethod
    @rank_zero_only
    def _log_to_loggers(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        # Straight to the loggers, as Lightning's LearningRateMonitor does: self.log would drop the
        # values on steps that are not on the trainer's log_every_n_steps grid.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
