"""DistillationMonitor: evaluation metrics with known answers, gradient norms, the imbalance warning."""

from __future__ import annotations

import copy
import csv
import math
import warnings
from functools import partial

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from kd_testing import quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule, soft_target_loss
from lightning_kd.callbacks import DistillationMonitor
from lightning_kd.callbacks.distillation_monitor import imbalance_message, soft_target_entropy
from lightning_kd.losses import DistillationLossOutput, hard_target_loss
from lightning_kd.models import MLP


def manual_ece(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error, written out: sum over bins of |accuracy - confidence| * share."""
    confidence, preds = probs.max(dim=-1)
    correct = (preds == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            total += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(total)


def test_a_student_that_copies_the_teacher(toy_loaders):
    """Known answer: agreement 1, KL 0, the same calibration error, and the teacher's entropy at T."""
    train, val = toy_loaders
    torch.manual_seed(0)
    teacher = MLP(8, 3, hidden=(16,))
    student = copy.deepcopy(teacher)
    module = DistillationModule(
        student, teacher, loss=DistillationLoss(temperature=3.0, alpha=0.5), optimizer=partial(torch.optim.SGD, lr=0.0)
    )
    trainer = quiet_trainer(max_epochs=1, callbacks=[DistillationMonitor()])
    trainer.fit(module, train, val)
    metrics = trainer.callback_metrics
    assert metrics["val/teacher_agreement"] == 1.0
    assert metrics["val/kl"].item() == pytest.approx(0.0, abs=1e-6)
    x, y = val.dataset.tensors
    with torch.no_grad():
        logits = teacher(x)
    assert metrics["val/ece"].item() == pytest.approx(manual_ece(logits.softmax(-1), y), abs=1e-5)
    assert metrics["val/teacher_ece"] == metrics["val/ece"]
    expected_entropy = soft_target_entropy(logits, 3.0).mean().item()
    assert metrics["val/teacher_entropy"].item() == pytest.approx(expected_entropy, rel=1e-5)
    assert math.log(3) * 0.5 < expected_entropy < math.log(3)  # a soft target, not a one-hot one


def test_different_models_have_their_own_metrics_and_test_is_logged(toy_loaders):
    train, val = toy_loaders
    torch.manual_seed(0)
    teacher, student = MLP(8, 3, hidden=(16,)), MLP(8, 3, hidden=(4,))
    module = DistillationModule(student, teacher, loss=DistillationLoss(temperature=2.0, alpha=0.5))
    trainer = quiet_trainer(max_epochs=2, callbacks=[DistillationMonitor()])
    trainer.fit(module, train, val)
    tested = trainer.test(module, val, verbose=False)[0]
    x, y = val.dataset.tensors
    with torch.no_grad():
        student_probs, teacher_probs = student(x).softmax(-1), teacher(x).softmax(-1)
    assert tested["test/ece"] == pytest.approx(manual_ece(student_probs, y), abs=1e-5)
    assert tested["test/teacher_ece"] == pytest.approx(manual_ece(teacher_probs, y), abs=1e-5)
    assert tested["test/ece"] != tested["test/teacher_ece"]
    assert tested["test/kl"] > 0


def test_grad_norms_match_the_closed_form():
    """Soft term: d/ds [T**2 KL_T] = T (q - p) / B. Hard term: (softmax(s) - onehot) / B."""
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    norms = DistillationMonitor.grad_norms(DistillationLoss(temperature=4.0, alpha=0.3), s, t, y)
    soft = 4.0 * ((s / 4).softmax(-1) - (t / 4).softmax(-1)) / 6
    hard = (s.softmax(-1) - torch.nn.functional.one_hot(y, 5)) / 6
    assert norms["grad_norm_soft"] == pytest.approx(soft.norm().item(), rel=1e-5)
    assert norms["grad_norm_hard"] == pytest.approx(hard.norm().item(), rel=1e-5)
    assert norms["grad_norm_ratio"] == pytest.approx(soft.norm().item() / hard.norm().item(), rel=1e-5)


def read_csv_column(path, column: str) -> list[tuple[int, float]]:
    with open(path) as handle:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(handle) if row.get(column)]


def test_grad_norms_are_logged_every_n_steps_without_warning(toy_loaders, tmp_path):
    train, val = toy_loaders  # 4 steps per epoch
    torch.manual_seed(0)
    module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(16,)), loss=DistillationLoss(20.0, 0.5))
    monitor = DistillationMonitor(grad_every_n_steps=3)
    trainer = quiet_trainer(max_epochs=3, logger=CSVLogger(tmp_path, name="", version=""), callbacks=[monitor])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="DistillationMonitor")
        trainer.fit(module, train, val)
    logged = read_csv_column(tmp_path / "metrics.csv", "train/grad_norm_soft")
    assert [step for step, _ in logged] == [1, 4, 7, 10]
    assert all(value > 0 for _, value in logged)
    ratio = monitor.last_grad_norms["grad_norm_ratio"]
    assert 1e-2 < ratio < 1e2  # with T**2 the two terms stay comparable even at T = 20
    assert monitor.grad_norm_seconds > 0


class SoftLossWithoutTSquared(DistillationLoss):
    """The classic bug: the soft term without its T**2 factor."""

    def forward(self, student_logits, teacher_logits, targets=None, mask=None):
        soft = soft_target_loss(student_logits, teacher_logits, self.temperature) / self.temperature**2
        hard = hard_target_loss(student_logits, targets)
        return DistillationLossOutput(self.alpha * soft + (1 - self.alpha) * hard, soft, hard)


def test_warns_once_when_t_squared_is_removed(toy_loaders):
    train, val = toy_loaders
    torch.manual_seed(0)
    module = DistillationModule(
        MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(16,)), loss=SoftLossWithoutTSquared(temperature=20.0, alpha=0.5)
    )
    monitor = DistillationMonitor(grad_every_n_steps=1)
    trainer = quiet_trainer(max_epochs=2, callbacks=[monitor])
    with pytest.warns(UserWarning, match=r"the hard term's gradient .* is \d+x the soft term's") as record:
        trainer.fit(module, train, val)
    assert sum("DistillationMonitor" in str(w.message) for w in record) == 1
    assert "T**2" in str(next(w.message for w in record if "DistillationMonitor" in str(w.message)))
    assert monitor.last_grad_norms["grad_norm_ratio"] < 1e-2


def test_unlabeled_batches_skip_the_gradient_balance(toy_loaders):
    train, val = toy_loaders
    unlabeled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.dataset.tensors[0]), batch_size=16)
    module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(16,)), loss=DistillationLoss(alpha=1.0))
    monitor = DistillationMonitor(grad_every_n_steps=1)
    quiet_trainer(max_epochs=1, callbacks=[monitor]).fit(module, unlabeled, val)
    assert monitor.last_grad_norms is None
    assert "val/teacher_entropy" in module.trainer.callback_metrics


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grad_every_n_steps": 0}, "grad_every_n_steps must be a positive integer, got 0"),
        ({"n_bins": -1}, "n_bins must be a positive integer, got -1"),
        ({"imbalance_threshold": 1.0}, "imbalance_threshold must be a ratio > 1, got 1.0"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationMonitor(**kwargs)


def test_a_copy_of_the_teacher_does_not_warn(toy_loaders):
    """Its soft gradient is zero for a good reason: there is nothing left to learn from the teacher."""
    train, val = toy_loaders
    teacher = MLP(8, 3, hidden=(16,))
    module = DistillationModule(
        copy.deepcopy(teacher), teacher, loss=DistillationLoss(3.0, 0.5), optimizer=partial(torch.optim.SGD, lr=0.0)
    )
    monitor = DistillationMonitor(grad_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="DistillationMonitor")
        quiet_trainer(max_epochs=1, callbacks=[monitor]).fit(module, train, val)
    assert monitor.last_grad_norms["grad_norm_ratio"] < 1e-2


@pytest.mark.parametrize(
    ("ratio", "kl", "cross_entropy", "expected"),
    [
        (1e-3, 0.5, 1.0, "the soft targets are effectively switched off"),  # the T**2 bug
        (1e-3, 1e-8, 1.0, None),  # a copy of the teacher: nothing left to learn from it
        (1e3, 0.5, 1.0, "the labels are effectively ignored"),
        (1e3, 0.5, 1e-5, None),  # the labels are fitted: the hard gradient is rightly tiny
        (0.5, 0.5, 1.0, None),  # balanced
    ],
)
def test_imbalance_message(ratio, kl, cross_entropy, expected):
    norms = {"grad_norm_soft": ratio * 0.1, "grad_norm_hard": 0.1, "grad_norm_ratio": ratio}
    message = imbalance_message(norms, 100.0, kl=kl, cross_entropy=cross_entropy)
    assert (message is None) if expected is None else (expected in message)
