"""WarmupSchedule ramps DKD's term in; the module logs it and DKD's two terms."""

from __future__ import annotations

import csv

import torch
from lightning.pytorch.loggers import CSVLogger

from kd_testing import quiet_trainer
from lightning_kd import DistillationModule
from lightning_kd.callbacks import WarmupSchedule
from lightning_kd.losses import DKDLoss
from lightning_kd.models import MLP


def test_the_dkd_term_is_ramped_in_and_its_terms_are_logged(toy_loaders, tmp_path):
    train, _ = toy_loaders
    torch.manual_seed(0)
    module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(16,)), loss=DKDLoss(warmup=0.0))
    seen = []

    class Record(WarmupSchedule):
        def on_train_epoch_start(self, trainer, pl_module):
            super().on_train_epoch_start(trainer, pl_module)
            seen.append(pl_module.loss.warmup)

    trainer = quiet_trainer(
        max_epochs=4, callbacks=[Record(0.0, 1.0, duration=2)], logger=CSVLogger(tmp_path), log_every_n_steps=1
    )
    trainer.fit(module, train)
    assert seen == [0.0, 0.5, 1.0, 1.0]
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["train/tckd"] and row["train/nckd"] and row["train/warmup"] for row in rows if row.get("train/loss"))
    assert {float(row["train/warmup"]) for row in rows if row.get("train/warmup")} == {0.0, 0.5, 1.0}
