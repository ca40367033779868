"""DistillationModule: the frozen teacher, T = 1 at inference, checkpoints, errors, learning."""

from __future__ import annotations

import csv
from functools import partial
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_testing import BatchNormDropoutNet, quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule, load_student
from lightning_kd.data import DigitsDataModule
from lightning_kd.fingerprint import module_fingerprint
from lightning_kd.models import MLP


def make_module(temperature: float = 4.0, alpha: float = 0.5, seed: int = 0, **kwargs) -> DistillationModule:
    torch.manual_seed(seed)
    teacher, student = BatchNormDropoutNet(width=32), MLP(8, 3, hidden=(8,))
    return DistillationModule(student, teacher, loss=DistillationLoss(temperature, alpha), **kwargs)


def teacher_bn_stats(module: DistillationModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.teacher.state_dict().items() if "running" in k or "num_batches" in k}


class RaisingTeacher(nn.Module):
    def forward(self, x):
        raise AssertionError("the teacher must not run when teacher_logits are in the batch")


class TestTrainingStep:
    def test_logs_the_loss_parts_temperature_and_alpha(self):
        module = make_module(temperature=3.0, alpha=0.25)
        x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
        with mock.patch.object(module, "log") as log, mock.patch.object(module, "log_dict") as log_dict:
            outputs = module.training_step((x, y), 0)
        logged = log_dict.call_args.args[0]
        assert set(logged) == {"train/loss", "train/soft_loss", "train/hard_loss"}
        torch.testing.assert_close(logged["train/loss"], outputs["loss"])
        assert log.call_args_list == [
            mock.call("train/temperature", 3.0, batch_size=4),
            mock.call("train/alpha", 0.25, batch_size=4),
        ]
        expected = module.loss(module.student(x), module.teacher(x), y).total
        torch.testing.assert_close(outputs["loss"], expected)

    def test_returns_detached_logits_and_targets_for_callbacks(self):
        module = make_module()
        x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
        with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict"):
            outputs = module.training_step((x, y), 0)
        assert outputs["loss"].requires_grad and not outputs["student_logits"].requires_grad
        torch.testing.assert_close(outputs["student_logits"], module.student(x).detach())
        torch.testing.assert_close(outputs["teacher_logits"], module.teacher(x))
        assert outputs["targets"] is y

    def test_gradients_reach_the_student_only(self):
        module = make_module()
        with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict"):
            loss = module.training_step((torch.randn(4, 8), torch.tensor([0, 1, 2, 0])), 0)["loss"]
        loss.backward()
        assert all(p.grad is not None for p in module.student.parameters())
        assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())

    @pytest.mark.parametrize("make_batch", [lambda x, y: (x,), lambda x, y: {"x": x}])
    def test_unlabeled_batches_train_soft_only(self, make_batch):
        module = make_module(alpha=1.0)
        with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict") as log_dict:
            module.training_step(make_batch(torch.randn(4, 8), None), 0)
        assert "train/hard_loss" not in log_dict.call_args.args[0]

    def test_partly_labeled_batches_use_the_labels_they_have(self):
        """A transfer set mixing labeled and unlabeled (-100) samples: CE over the labeled only."""
        module = make_module(alpha=0.5)
        x, y = torch.randn(4, 8), torch.tensor([0, -100, 2, -100])
        with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict") as log_dict:
            module.training_step((x, y), 0)
        hard = log_dict.call_args.args[0]["train/hard_loss"]
        torch.testing.assert_close(hard, nn.functional.cross_entropy(module.student(x[[0, 2]]), y[[0, 2]]))

    def test_precomputed_teacher_logits_skip_the_teacher(self):
        module = DistillationModule(MLP(8, 3, hidden=(8,)), RaisingTeacher(), loss=DistillationLoss(alpha=0.5))
        x, y, t = torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
        with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict"):
            loss = module.training_step({"x": x, "y": y, "teacher_logits": t}, 0)["loss"]
        torch.testing.assert_close(loss, module.loss(module.student(x), t, y).total)

    def test_num_classes_is_inferred_and_then_checked(self):
        module = make_module()
        assert module.num_classes is None
        with mock.patch.object(module, "log"), mock.patch.object(module, "log_dict"):
            module.training_step((torch.randn(4, 8), torch.tensor([0, 1, 2, 0])), 0)
        assert module.num_classes == 3 and module.hparams.num_classes == 3
        fixed = make_module(num_classes=5)
        with pytest.raises(ValueError, match=r"num_classes=5 .* got shape \(4, 3\)"):
            fixed.training_step((torch.randn(4, 8), torch.tensor([0, 1, 2, 0])), 0)


def test_teacher_stays_frozen_through_fit(toy_loaders):
    """No gradients, never in the optimizer, eval mode, BatchNorm stats untouched."""
    train, val = toy_loaders
    module = make_module()
    before = teacher_bn_stats(module)
    teacher_params = {id(p) for p in module.teacher.parameters()}
    trainer = quiet_trainer(max_epochs=3, check_val_every_n_epoch=1, num_sanity_val_steps=2)
    trainer.fit(module, train, val)

    assert trainer.global_step == 12
    after = teacher_bn_stats(module)
    assert before.keys() == after.keys() and len(before) == 3
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not module.teacher.training
    assert all(not m.training for m in module.teacher.modules())
    assert module.student.training
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    optimizer_params = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert [id(p) for p in optimizer_params] == [id(p) for p in module.student.parameters()]
    assert not teacher_params & {id(p) for p in optimizer_params}


def test_train_mode_cannot_flip_the_teacher():
    module = make_module()
    module.train()
    assert module.student.training and not module.teacher.training
    assert not any(m.training for m in module.teacher.modules())


def test_fit_does_not_warn_about_the_frozen_teacher(toy_loaders, recwarn):
    train, val = toy_loaders
    quiet_trainer(max_epochs=1).fit(make_module(), train, val)
    assert not [w for w in recwarn if "eval mode at the start of training" in str(w.message)]


def test_evaluation_and_prediction_use_t_equals_one(toy_loaders):
    """Two modules that differ only in temperature validate, test and predict identically."""
    _, val = toy_loaders
    cold, hot = make_module(temperature=1.0), make_module(temperature=20.0)
    hot.student.load_state_dict(cold.student.state_dict())
    hot.teacher.load_state_dict(cold.teacher.state_dict())

    trainer = quiet_trainer()
    cold_val, hot_val = trainer.validate(cold, val)[0], trainer.validate(hot, val)[0]
    assert set(cold_val) == {"val/loss", "val/acc", "val/teacher_acc", "val/teacher_agreement", "val/kl"}
    assert cold_val == hot_val
    assert trainer.test(cold, val)[0] == trainer.test(hot, val)[0]

    cold_pred, hot_pred = trainer.predict(cold, val), trainer.predict(hot, val)
    for a, b in zip(cold_pred, hot_pred, strict=True):
        assert torch.equal(a["probs"], b["probs"]) and torch.equal(a["preds"], b["preds"])
    x = torch.cat([x for x, _ in val])
    torch.testing.assert_close(torch.cat([p["probs"] for p in cold_pred]), torch.softmax(cold.student.eval()(x), -1))

    hot.loss.temperature = 7.0  # as a schedule would
    assert trainer.validate(hot, val)[0] == cold_val


def test_validation_metrics_are_exact_over_the_dataset():
    """Metrics are per-sample averages over the whole set, not means of per-batch values."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 8), torch.randint(0, 3, (10,))
    module = make_module()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 2
    metrics = quiet_trainer().validate(module, loader)[0]
    module.eval()
    s, t = module.student(x), module.teacher(x)
    assert metrics["val/acc"] == pytest.approx((s.argmax(-1) == y).float().mean().item(), abs=1e-6)
    assert metrics["val/teacher_agreement"] == pytest.approx((s.argmax(-1) == t.argmax(-1)).float().mean().item())
    assert metrics["val/teacher_acc"] == pytest.approx((t.argmax(-1) == y).float().mean().item())
    assert metrics["val/loss"] == pytest.approx(nn.functional.cross_entropy(s, y).item(), rel=1e-5)
    expected_kl = nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True)
    assert metrics["val/kl"] == pytest.approx(expected_kl.item(), rel=1e-5)


def test_checkpoint_holds_the_student_only_and_round_trips(toy_loaders, tmp_path):
    train, val = toy_loaders
    module = make_module(optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, train, val)
    path = tmp_path / "last.ckpt"

    saved = torch.load(path, weights_only=True)  # primitives only: loads under weights_only
    keys = list(saved["state_dict"])
    assert keys and all(k.startswith("student.") for k in keys)
    assert saved["hyper_parameters"]["num_classes"] == 3
    assert saved["hyper_parameters"]["temperature"] == 4.0

    module.eval()
    x = torch.cat([x for x, _ in val])
    expected = module.student(x)

    # Inference, way 1: the student alone, no teacher needed.
    student = load_student(MLP(8, 3, hidden=(8,)), path)
    torch.testing.assert_close(student(x), expected)
    # Inference, way 2: the module, with the teacher passed back in.
    reloaded = DistillationModule.load_from_checkpoint(path, student=MLP(8, 3, hidden=(8,)), teacher=module.teacher)
    assert reloaded.num_classes == 3
    torch.testing.assert_close(reloaded.eval()(x), expected)

    # Resume: a fresh module with the same teacher continues from epoch 2 to epoch 4.
    resumed = make_module(seed=1, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    resumed.teacher.load_state_dict(module.teacher.state_dict())
    trainer = quiet_trainer(
        max_epochs=4,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "resumed", save_last=True)],
    )
    trainer.fit(resumed, train, val, ckpt_path=path)
    assert trainer.current_epoch == 4 and trainer.global_step == 16
    assert not torch.equal(resumed.student(x), expected)  # it trained on


def test_resuming_with_a_different_teacher_is_refused(toy_loaders, tmp_path):
    train, val = toy_loaders
    module = make_module()
    trainer = quiet_trainer(
        max_epochs=1, enable_checkpointing=True, callbacks=[ModelCheckpoint(tmp_path, save_last=True)]
    )
    trainer.fit(module, train, val)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["teacher_fingerprint"] == module_fingerprint(module.teacher)

    other = make_module(seed=7)  # same architecture, other teacher weights
    with pytest.raises(ValueError, match=r"trained with a different teacher \(fingerprint [0-9a-f]{16}\)"):
        quiet_trainer(max_epochs=2).fit(other, train, val, ckpt_path=tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="different teacher"):
        DistillationModule.load_from_checkpoint(
            tmp_path / "last.ckpt", student=MLP(8, 3, hidden=(8,)), teacher=other.teacher
        )


class TeacherThatBreaks(BatchNormDropoutNet):
    """Returns NaN logits from its third call on, as a diverged or corrupted teacher would."""

    calls = 0

    def forward(self, x):
        TeacherThatBreaks.calls += 1
        logits = super().forward(x)
        return logits * float("nan") if TeacherThatBreaks.calls >= 3 else logits


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(toy_loaders, tmp_path):
    train, _ = toy_loaders
    TeacherThatBreaks.calls = 0
    module = DistillationModule(MLP(8, 3, hidden=(8,)), TeacherThatBreaks(width=32))
    checkpoints = ModelCheckpoint(tmp_path, save_last=True, every_n_train_steps=1)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoints])
    with pytest.raises(FloatingPointError, match=r"global step 2 \(epoch 0, batch 2\): teacher logits is not finite"):
        trainer.fit(module, train)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


class TeacherThatCountsCalls(nn.Module):
    """Changes its own buffer on every forward: a teacher that is not frozen in fact."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_fit_fails_if_the_teacher_changed(toy_loaders):
    train, _ = toy_loaders
    module = DistillationModule(MLP(8, 3, hidden=(8,)), TeacherThatCountsCalls())
    with pytest.raises(RuntimeError, match="the teacher's weights or buffers changed during fit"):
        quiet_trainer(max_epochs=1).fit(module, train)


def test_load_student_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*missing.ckpt"):
        load_student(MLP(8, 3), tmp_path / "missing.ckpt")


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_non_module_networks_are_rejected(role):
    networks = {"student": MLP(8, 3), "teacher": MLP(8, 3)}
    networks[role] = lambda x: x
    with pytest.raises(TypeError, match=rf"{role} must be a torch.nn.Module, got function"):
        DistillationModule(**networks)


def test_bad_constructor_arguments_are_rejected():
    net = MLP(8, 3)
    with pytest.raises(ValueError, match="same object twice"):
        DistillationModule(net, net)
    with pytest.raises(TypeError, match=r"optimizer must be a callable .* got 'adam'"):
        DistillationModule(MLP(8, 3), MLP(8, 3), optimizer="adam")
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer or None, got 0"):
        DistillationModule(MLP(8, 3), MLP(8, 3), num_classes=0)


def test_missing_labels_with_alpha_below_one_fail_clearly():
    module = make_module(alpha=0.5)
    with pytest.raises(ValueError, match=r"targets are required when alpha < 1"):
        module.training_step((torch.randn(4, 8),), 0)


def test_lr_scheduler_factory_is_used(toy_loaders):
    train, val = toy_loaders
    module = make_module(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(module, train, val)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


def test_ddp_spawn_keeps_the_teacher_frozen_and_metrics_exact():
    """Two processes, no find_unused_parameters; metrics over the whole set, each
    sample counted once (digits has 269 validation images: no even split)."""
    data = DigitsDataModule(batch_size=32)
    torch.manual_seed(0)
    module = DistillationModule(
        MLP(64, 10, hidden=(16,)), BatchNormDropoutNet(in_features=64, num_classes=10, width=32)
    )
    before = module_fingerprint(module.teacher)
    trainer = quiet_trainer(max_epochs=1, strategy="ddp_spawn", devices=2)
    trainer.fit(module, datamodule=data)  # on_fit_end also checks the teacher on each rank
    assert module_fingerprint(module.teacher) == before and not module.teacher.training
    two_processes = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    one_process = quiet_trainer().validate(module, datamodule=data, verbose=False)[0]
    assert two_processes.keys() == one_process.keys()
    for name, value in one_process.items():
        assert two_processes[name] == pytest.approx(value, abs=1e-6), name


class LogsEveryStep(L.LightningModule):
    """Logs on every step, leaving the choice of steps to Lightning."""

    def __init__(self):
        super().__init__()
        self.net = MLP(8, 3, hidden=(8,))

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def logged_steps(tmp_path, module, loader, every: int) -> list[int]:
    logger = CSVLogger(tmp_path, name="", version="")
    quiet_trainer(max_epochs=3, logger=logger, log_every_n_steps=every).fit(module, loader)
    if not (tmp_path / "metrics.csv").exists():  # nothing was logged
        return []
    with open(tmp_path / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]


@pytest.mark.parametrize("every", [1, 3, 50])
def test_training_values_are_logged_on_the_steps_lightning_writes(toy_loaders, tmp_path, every):
    """Logging only there (it is costly) leaves the loggers' output unchanged."""
    train, _ = toy_loaders
    expected = logged_steps(tmp_path / "reference", LogsEveryStep(), train, every)
    assert logged_steps(tmp_path / "module", make_module(), train, every) == expected
    assert len(expected) == {1: 12, 3: 4, 50: 0}[every]
