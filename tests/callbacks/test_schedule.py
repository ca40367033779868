"""TemperatureSchedule and AlphaSchedule: values by epoch and step, T**2, T = 1 in validation, resume."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_testing import quiet_trainer
from lightning_kd import (
    ClassifierModule,
    DistillationLoss,
    DistillationLossOutput,
    DistillationModule,
    soft_target_loss,
)
from lightning_kd.callbacks import AlphaSchedule, TemperatureSchedule
from lightning_kd.callbacks.schedule import schedule_value
from lightning_kd.models import MLP


def make_module(temperature: float = 4.0, alpha: float = 0.5) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(
        MLP(8, 3, hidden=(8,)), MLP(8, 3, hidden=(32,)), loss=DistillationLoss(temperature, alpha)
    )


class Recorder(L.Callback):
    """Records, per training batch, the loss settings in use and the logged soft loss.

    Needs ``log_every_n_steps=1``: the module logs its ``train/`` values on the logging steps only.
    """

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step - 1,  # the step this batch made
                "temperature": pl_module.loss.temperature,
                "alpha": pl_module.loss.alpha,
                "logged_temperature": float(trainer.callback_metrics["train/temperature"]),
                "logged_alpha": float(trainer.callback_metrics["train/alpha"]),
                "soft_loss": float(trainer.callback_metrics["train/soft_loss"]),
                "expected_soft": float(
                    soft_target_loss(outputs["student_logits"], outputs["teacher_logits"], pl_module.loss.temperature)
                ),
            }
        )

    def per_epoch(self, key: str) -> list[float]:
        return [next(r[key] for r in self.rows if r["epoch"] == e) for e in sorted({r["epoch"] for r in self.rows})]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("constant", [8.0, 8.0, 8.0, 8.0, 8.0, 8.0]),
        ("linear", [8.0, 6.5, 5.0, 3.5, 2.0, 2.0]),
        ("cosine", [8.0, 8 - 6 * (1 - math.cos(math.pi / 4)) / 2, 5.0, 2 + 6 * (1 - math.cos(math.pi / 4)) / 2, 2, 2]),
    ],
)
def test_schedule_values(kind, expected):
    assert [schedule_value(kind, 8.0, 2.0, i, duration=4) for i in range(6)] == pytest.approx(expected)


def test_step_schedule_moves_in_equal_stairs_at_the_milestones():
    values = [schedule_value("step", 1.0, 0.4, i, duration=1, milestones=[2, 5]) for i in range(7)]
    assert values == pytest.approx([1.0, 1.0, 0.7, 0.7, 0.7, 0.4, 0.4])


def test_temperature_by_epoch_through_a_real_fit(toy_loaders):
    """T goes 8 -> 2 over the fit; the logged value and the T**2-scaled soft loss follow it."""
    train, val = toy_loaders
    recorder = Recorder()
    trainer = quiet_trainer(
        max_epochs=5, log_every_n_steps=1, callbacks=[TemperatureSchedule(8.0, 2.0, kind="linear"), recorder]
    )
    trainer.fit(make_module(temperature=4.0), train, val)
    assert recorder.per_epoch("temperature") == pytest.approx([8.0, 6.5, 5.0, 3.5, 2.0])
    assert all(r["logged_temperature"] == r["temperature"] for r in recorder.rows)
    for row in recorder.rows:  # the loss used the scheduled T, T**2 included
        assert row["soft_loss"] == pytest.approx(row["expected_soft"], rel=1e-5)


def test_alpha_by_step_through_a_real_fit(toy_loaders):
    train, val = toy_loaders  # 4 batches per epoch, 3 epochs: steps 0..11
    recorder = Recorder()
    schedule = AlphaSchedule(1.0, 0.0, kind="step", interval="step", milestones=[4, 8])
    trainer = quiet_trainer(max_epochs=3, log_every_n_steps=1, callbacks=[schedule, recorder])
    trainer.fit(make_module(alpha=0.3), train, val)
    assert [r["step"] for r in recorder.rows] == list(range(12))
    assert [r["alpha"] for r in recorder.rows] == [1.0] * 4 + [0.5] * 4 + [0.0] * 4
    assert [r["logged_alpha"] for r in recorder.rows] == [r["alpha"] for r in recorder.rows]


def test_step_interval_defaults_to_the_whole_fit(toy_loaders):
    train, val = toy_loaders
    recorder = Recorder()
    trainer = quiet_trainer(
        max_epochs=2, log_every_n_steps=1, callbacks=[TemperatureSchedule(5.0, 1.0, interval="step"), recorder]
    )
    trainer.fit(make_module(), train, val)
    # 8 steps: duration 7, so the last step uses `end`.
    assert [r["temperature"] for r in recorder.rows] == pytest.approx([5 - 4 * i / 7 for i in range(8)])


def test_validation_stays_at_temperature_one(toy_loaders):
    train, val = toy_loaders
    module = make_module()
    trainer = quiet_trainer(max_epochs=2, callbacks=[TemperatureSchedule(20.0, 10.0)])
    trainer.fit(module, train, val)
    assert module.loss.temperature == 10.0
    scheduled = trainer.validate(module, val, verbose=False)[0]
    module.loss.temperature = 1.0
    at_one = trainer.validate(module, val, verbose=False)[0]
    assert scheduled == at_one
    logits, targets = module.student(val.dataset.tensors[0]), val.dataset.tensors[1]
    assert scheduled["val/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)


class StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.parametrize("resumed_max_epochs", [5, 7])
def test_schedule_continues_after_resume(toy_loaders, tmp_path, resumed_max_epochs):
    """Resumed at epoch 2 of 5, the schedule continues where it was, even if max_epochs changes."""
    train, val = toy_loaders
    first = TemperatureSchedule(8.0, 2.0, kind="cosine")
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=5, enable_checkpointing=True, callbacks=[first, checkpoints, StopAfterEpoch(1)])
    trainer.fit(make_module(), train, val)
    assert trainer.current_epoch == 2
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert saved["duration"] == 4 and saved["value"] == pytest.approx(schedule_value("cosine", 8.0, 2.0, 1, 4))

    recorder = Recorder()
    resumed = TemperatureSchedule(8.0, 2.0, kind="cosine")
    trainer = quiet_trainer(max_epochs=resumed_max_epochs, log_every_n_steps=1, callbacks=[resumed, recorder])
    trainer.fit(make_module(), train, val, ckpt_path=tmp_path / "last.ckpt")
    expected = [schedule_value("cosine", 8.0, 2.0, epoch, duration=4) for epoch in range(2, resumed_max_epochs)]
    assert recorder.per_epoch("temperature") == pytest.approx(expected)


def test_a_changed_schedule_on_resume_warns_and_uses_the_new_one(toy_loaders, tmp_path):
    train, val = toy_loaders
    trainer = quiet_trainer(
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[TemperatureSchedule(8.0, 2.0), ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(make_module(), train, val)
    recorder = Recorder()
    trainer = quiet_trainer(max_epochs=3, log_every_n_steps=1, callbacks=[TemperatureSchedule(3.0), recorder])
    with pytest.warns(UserWarning, match="differs from this one"):
        trainer.fit(make_module(), train, val, ckpt_path=tmp_path / "last.ckpt")
    assert recorder.per_epoch("temperature") == [3.0]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TemperatureSchedule(0.0, 2.0), "temperature must be finite and > 0, got 0.0"),
        (lambda: TemperatureSchedule(4.0, kind="exponential"), "kind must be one of .* got 'exponential'"),
        (lambda: TemperatureSchedule(4.0, interval="batch"), "interval must be one of .* got 'batch'"),
        (lambda: TemperatureSchedule(4.0, 1.0, kind="step"), "kind='step' needs milestones"),
        (lambda: TemperatureSchedule(4.0, 1.0, kind="step", milestones=[5, 3]), "strictly increasing"),
        (lambda: TemperatureSchedule(4.0, 1.0, milestones=[3]), "only used by kind='step'"),
        (lambda: TemperatureSchedule(4.0, 1.0, duration=0), "duration must be a positive integer or None, got 0"),
        (lambda: AlphaSchedule(0.9, 1.5), r"alpha must be in \[0, 1\] .* got 1.5"),
    ],
)
def test_bad_settings_are_refused(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_a_module_that_is_not_distillable_is_refused(toy_loaders):
    train, val = toy_loaders
    trainer = quiet_trainer(max_epochs=1, callbacks=[TemperatureSchedule(4.0)])
    with pytest.raises(TypeError, match="TemperatureSchedule needs a DistillableModule.*got ClassifierModule"):
        trainer.fit(ClassifierModule(MLP(8, 3)), train, val)


def test_a_loss_without_a_temperature_is_refused(toy_loaders):
    def mse_only(student_logits, teacher_logits, targets):
        loss = torch.nn.functional.mse_loss(student_logits, teacher_logits)
        return DistillationLossOutput(loss, loss, None)

    train, val = toy_loaders
    trainer = quiet_trainer(max_epochs=1, callbacks=[TemperatureSchedule(4.0)])
    with pytest.raises(TypeError, match=r"DistillationModule.loss \(function\) has no such attribute"):
        trainer.fit(DistillationModule(MLP(8, 3), MLP(8, 3), loss=mse_only), train, val)


def test_an_open_ended_fit_needs_a_duration(toy_loaders):
    train, val = toy_loaders
    trainer = quiet_trainer(max_epochs=-1, max_steps=4, callbacks=[TemperatureSchedule(4.0, 1.0)])
    with pytest.raises(ValueError, match="no max_epochs.*pass duration="):
        trainer.fit(make_module(), train, val)
