"""``LightningKDModule``: what every module of lightning-kd shares.

Optimizers built from factories on the trainable parameters only, per-stage evaluation metrics
reset at each evaluation start, ``predict_step`` at ``T = 1``, and an exit that leaves no
process group behind.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.batch import split_batch
from lightning_kd.checks import check_positive_int
from lightning_kd.distributed import destroy_process_group_at_exit
from lightning_kd.losses import hard_target_loss
from lightning_kd.metrics import ResetMetricsOnEvaluationStart
from lightning_kd.optim import OptimizerFactory, SchedulerFactory, check_factory, configure_optimizers

__all__ = ["LightningKDModule", "attached_trainer", "check_module", "infer_num_classes"]


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


def attached_trainer(module: L.LightningModule) -> Optional[L.Trainer]:
    """``module.trainer``, or ``None`` when the module is used outside a ``Trainer``."""
    try:
        return module.trainer
    except RuntimeError:  # Lightning raises when no Trainer is attached
        return None


class LightningKDModule(ResetMetricsOnEvaluationStart, L.LightningModule):
    """Base of :class:`~lightning_kd.ClassifierModule` and the distillation modules.

    Subclasses set ``self.metrics = stage_metrics([...])`` (with at least ``acc`` and ``loss``),
    implement ``forward`` (the trained network's logits at ``T = 1``) and
    :meth:`trainable_parameters`. A subclass that overrides ``setup`` calls ``super().setup(stage)``.

    Args:
        optimizer: Callable taking parameters, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``;
            Adam with ``lr=1e-3`` when ``None``. Receives :meth:`trainable_parameters` only.
        lr_scheduler: Optional callable taking the optimizer (see :func:`~lightning_kd.optim.configure_optimizers`).
        num_classes: Number of classes; inferred from the first batch when ``None``.
    """

    def __init__(
        self,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        check_factory("optimizer", optimizer, "the trained network's parameters")
        check_factory("lr_scheduler", lr_scheduler, "the optimizer")
        check_positive_int("num_classes", num_classes, allow_none=True)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.num_classes = num_classes

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters the optimizer receives."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        # Every rank has its process group by now; leave none to the interpreter's shutdown.
        destroy_process_group_at_exit()

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.trainable_parameters(), self.optimizer_factory, self.lr_scheduler_factory)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Return ``{"probs": softmax(logits), "preds": argmax}`` at ``T = 1``."""
        logits = self(split_batch(batch).x)
        return {"probs": F.softmax(logits.float(), dim=-1), "preds": logits.argmax(dim=-1)}

    def update_and_log(self, stage: str, values: dict[str, tuple[Tensor, Optional[float]]], batch_size: int) -> None:
        """Update the ``stage`` metrics with ``{name: (value, weight)}`` and log the metric objects."""
        metrics = self.metrics[stage]
        for name, (value, weight) in values.items():
            if weight is None:
                metrics[name].update(value)
            else:
                metrics[name].update(value, weight=weight)
            self.log(f"{stage}/{name}", metrics[name], on_step=False, on_epoch=True, batch_size=batch_size)

    @staticmethod
    def supervised_values(logits: Tensor, targets: Tensor) -> dict[str, tuple[Tensor, Optional[float]]]:
        """``acc`` (per-sample hits) and ``loss`` (cross-entropy, weighted by the batch size)."""
        return {
            "acc": ((logits.argmax(dim=-1) == targets).float(), None),
            "loss": (hard_target_loss(logits, targets), logits.shape[0]),
        }
