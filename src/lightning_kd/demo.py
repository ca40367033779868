"""Placeholder main job: train a teacher on digits, then distill it into a small student.

Run with ``python -m lightning_kd.demo``.
"""

from __future__ import annotations

import lightning as L

from lightning_kd import ClassifierModule, DistillationLoss, DistillationModule
from lightning_kd.data import DigitsDataModule
from lightning_kd.models import MLP


def _trainer(max_epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )


def main() -> None:
    L.seed_everything(0)
    data = DigitsDataModule()
    teacher = MLP(64, 10, hidden=(256, 256), dropout=0.2)
    _trainer(20).fit(ClassifierModule(teacher), datamodule=data)
    teacher_acc = _trainer(1).test(ClassifierModule(teacher), datamodule=data, verbose=False)[0]["test/acc"]
    student = DistillationModule(MLP(64, 10, hidden=(30,)), teacher, loss=DistillationLoss(2.0, 0.5))
    _trainer(20).fit(student, datamodule=data)
    student_acc = _trainer(1).test(student, datamodule=data, verbose=False)[0]["test/acc"]
    print(f"teacher test accuracy: {teacher_acc:.3f}   distilled student test accuracy: {student_acc:.3f}")


if __name__ == "__main__":
    main()
