"""ProgressLog: one line per validation with the step, the elapsed time and the validation metrics."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, TensorDataset

from kd_testing import quiet_trainer
from lightning_kd import ClassifierModule
from lightning_kd.callbacks import ProgressLog
from lightning_kd.models import MLP


def test_each_validation_logs_one_line_with_the_step_and_metrics(caplog):
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    loader = DataLoader(data, batch_size=8)
    trainer = quiet_trainer(max_steps=8, val_check_interval=4, callbacks=[ProgressLog("teacher")])
    with caplog.at_level(logging.INFO, logger="lightning_kd.callbacks.progress_log"):
        trainer.fit(ClassifierModule(MLP(8, 3, hidden=(4,))), loader, loader)
    lines = [r.getMessage() for r in caplog.records if r.name == "lightning_kd.callbacks.progress_log"]
    assert len(lines) == 2  # steps 4 and 8; the sanity check is not logged
    assert lines[0].startswith("teacher: step 4/8, epoch 0, ") and "val/acc " in lines[0] and "val/loss " in lines[0]
    assert lines[1].startswith("teacher: step 8/8, epoch 1, ")
