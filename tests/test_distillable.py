"""DistillableModule: teacher outputs usable by any loss, a fit-scoped warning filter, one teacher identity."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kd_testing import quiet_trainer
from lightning_kd import DistillationLossOutput, DistillationModule
from lightning_kd.callbacks import CacheTeacherOutputs
from lightning_kd.data import IndexedDataset
from lightning_kd.fingerprint import dataset_fingerprint
from lightning_kd.models import MLP
from lightning_kd.teacher_outputs import TeacherOutputCache, cache_fingerprint


class MSELoss(torch.nn.Module):
    """A user's own loss: autograd saves the teacher's logits for the backward pass."""

    def forward(self, student_logits, teacher_logits, targets):
        loss = F.mse_loss(student_logits, teacher_logits)
        return DistillationLossOutput(loss, loss, None)


class WithTeacherLogits(Dataset):
    def __init__(self, x, y, teacher):
        with torch.no_grad():
            self.x, self.y, self.logits = x, y, teacher(x)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "teacher_logits": self.logits[i]}


@pytest.mark.parametrize("source", ["live teacher", "stored outputs", "logits in the batch"])
def test_a_custom_loss_trains_with_every_source_of_teacher_logits(source, tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    teacher = MLP(8, 3, hidden=(16,))
    module = DistillationModule(MLP(8, 3, hidden=(4,)), teacher, loss=MSELoss())
    dataset = {
        "live teacher": TensorDataset(x, y),
        "stored outputs": IndexedDataset(TensorDataset(x, y)),
        "logits in the batch": WithTeacherLogits(x, y, teacher),
    }[source]
    callbacks = [CacheTeacherOutputs(tmp_path, dtype="float32")] if source == "stored outputs" else []
    before = [p.clone() for p in module.student.parameters()]
    quiet_trainer(max_epochs=2, callbacks=callbacks).fit(module, DataLoader(dataset, batch_size=16))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.student.parameters(), strict=True))


def test_a_custom_loss_that_returns_a_bare_tensor_is_told_what_to_return():
    class BareLoss(torch.nn.Module):
        def forward(self, student_logits, teacher_logits, targets):
            return F.mse_loss(student_logits, teacher_logits)

    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3), loss=BareLoss())
    with pytest.raises(TypeError, match=r"loss BareLoss returned a Tensor; .* must return an object with total, soft"):
        quiet_trainer(max_epochs=1).fit(module, DataLoader(TensorDataset(x, y), batch_size=16))


def test_teacher_logits_are_ordinary_tensors_without_a_graph():
    module = DistillationModule(MLP(8, 3), MLP(8, 3))
    logits = module.teacher_logits(torch.randn(4, 8))
    assert not logits.is_inference() and not logits.requires_grad and logits.grad_fn is None


def test_the_eval_mode_filter_lives_only_during_fit(toy_loaders):
    train, val = toy_loaders
    before = list(warnings.filters)
    seen = []

    class Spy(DistillationModule):
        def on_train_start(self):
            seen.append(any("in eval mode at the start of training" in str(f[1]) for f in warnings.filters))
            super().on_train_start()

    quiet_trainer(max_epochs=1).fit(Spy(MLP(8, 3), MLP(8, 3)), train, val)
    assert seen == [True]
    assert warnings.filters == before


def test_the_eval_mode_filter_is_removed_when_fit_fails_early(toy_loaders):
    class FailsAtStart(DistillationModule):
        def on_train_start(self):
            raise RuntimeError("boom")

    train, _ = toy_loaders
    with pytest.raises(RuntimeError, match="boom"):
        quiet_trainer(max_epochs=1).fit(FailsAtStart(MLP(8, 3), MLP(8, 3)), train)
    assert not [f for f in warnings.filters if "in eval mode at the start of training" in str(f[1])]


def test_the_output_store_keys_on_the_modules_teacher_fingerprint(tmp_path, monkeypatch):
    """One identity of the teacher, computed in one place (full and broadcast under FSDP)."""
    monkeypatch.setattr(DistillationModule, "teacher_fingerprint", lambda self: "f" * 64)
    dataset = IndexedDataset(TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,))))
    callback = CacheTeacherOutputs(tmp_path, dtype="float32")
    module = DistillationModule(MLP(8, 3), MLP(8, 3))
    quiet_trainer(max_epochs=1, callbacks=[callback]).fit(module, DataLoader(dataset, batch_size=8))
    expected = cache_fingerprint("f" * 64, dataset_fingerprint(dataset), "float32", None)
    assert TeacherOutputCache.open(tmp_path, expected) is not None


def test_the_fingerprint_is_recomputed_for_each_fit(toy_loaders):
    train, _ = toy_loaders
    module = DistillationModule(MLP(8, 3), MLP(8, 3))
    first = module.teacher_fingerprint()
    with torch.no_grad():
        module.teacher.net[1].weight.add_(1.0)
    quiet_trainer(max_epochs=1).fit(module, train)
    assert module.teacher_fingerprint() != first
