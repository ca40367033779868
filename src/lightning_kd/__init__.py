"""lightning-kd: knowledge distillation for PyTorch Lightning and Hydra."""

from lightning_kd.batch import Batch, split_batch
from lightning_kd.checkpoint import load_student
from lightning_kd.classifier import ClassifierModule
from lightning_kd.losses import (
    DistillationLoss,
    DistillationLossOutput,
    hard_target_loss,
    logit_matching_loss,
    soft_target_loss,
)
from lightning_kd.module import DistillationModule

__all__ = [
    "Batch",
    "ClassifierModule",
    "DistillationLoss",
    "DistillationLossOutput",
    "DistillationModule",
    "hard_target_loss",
    "load_student",
    "logit_matching_loss",
    "soft_target_loss",
    "split_batch",
]

__version__ = "0.1.0"
