"""End to end on real data: a teacher trained on digits, then distilled into a small student."""

from __future__ import annotations

import lightning as L

from kd_testing import quiet_trainer
from lightning_kd import ClassifierModule, DistillationLoss, DistillationModule
from lightning_kd.data import DigitsDataModule
from lightning_kd.models import MLP


def test_distilled_student_reaches_90_percent_of_the_teacher_on_digits():
    """A correctness smoke test, not a benchmark: a broken loss or teacher would fail it."""
    L.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=64)
    teacher = MLP(64, 10, hidden=(256, 256), dropout=0.2)
    quiet_trainer(max_epochs=20).fit(ClassifierModule(teacher), datamodule=data)
    teacher_acc = quiet_trainer().validate(ClassifierModule(teacher), datamodule=data)[0]["val/acc"]
    assert teacher_acc > 0.9

    student = MLP(64, 10, hidden=(30,))
    module = DistillationModule(student, teacher, loss=DistillationLoss(temperature=2.0, alpha=0.5))
    trainer = quiet_trainer(max_epochs=20)
    trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data)[0]
    assert metrics["val/acc"] >= 0.9 * teacher_acc, (metrics, teacher_acc)
    assert metrics["val/teacher_agreement"] >= 0.85
