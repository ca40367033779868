"""CacheTeacherOutputs: the same training as online distillation, reuse, invalidation, the augmentation guard."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kd_testing import BatchNormDropoutNet, quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule
from lightning_kd.callbacks import CacheTeacherOutputs, TeacherOutputMismatchError
from lightning_kd.data import IndexedDataset
from lightning_kd.data.samplers import EpochBatchSampler
from lightning_kd.models import MLP


def toy_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    return x, (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long()


def indexed_loader(x, y, batch_size: int = 16) -> DataLoader:
    """Shuffled batches in an order fixed by the epoch: both runs of a comparison see the same batches."""
    dataset = IndexedDataset(TensorDataset(x, y))
    return DataLoader(dataset, batch_size=None, sampler=EpochBatchSampler(len(x), batch_size, shuffle=True, seed=0))


def make_module(seed: int = 0) -> DistillationModule:
    torch.manual_seed(seed)
    teacher = BatchNormDropoutNet(width=32)
    teacher.net[2].running_mean.normal_()  # BatchNorm statistics that matter in eval mode
    return DistillationModule(MLP(8, 3, hidden=(8,)), teacher, loss=DistillationLoss(temperature=4.0, alpha=0.5))


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def fit(module, loader, tmp_path, *callbacks, epochs: int = 1) -> LossRecorder:
    recorder = LossRecorder()
    trainer = quiet_trainer(max_epochs=epochs, default_root_dir=tmp_path, callbacks=[*callbacks, recorder])
    trainer.fit(module, loader)
    return recorder


class TeacherCounter(L.Callback):
    """Counts the teacher's forward passes during training steps (not the cache's checks)."""

    def __init__(self):
        self.calls = 0

    def on_train_start(self, trainer, pl_module):
        pl_module.teacher.register_forward_hook(lambda *args: self.count(trainer))

    def count(self, trainer):
        self.calls += 1


@pytest.mark.parametrize(("dtype", "exact"), [("float32", True), ("float16", False)])
def test_cached_training_matches_online_training(tmp_path, dtype, exact):
    x, y = toy_data()
    online = make_module()
    online_losses = fit(online, indexed_loader(x, y), tmp_path / "online").losses
    cached = make_module()
    cache = CacheTeacherOutputs(dirpath=tmp_path / "cache", dtype=dtype)
    cached_losses = fit(cached, indexed_loader(x, y), tmp_path / "cached", cache).losses
    assert cache.built and cache.cache.dtype == dtype and len(cached_losses) == len(online_losses) == 4
    tolerance = {"rtol": 0, "atol": 0} if exact else {"rtol": 2e-3, "atol": 2e-3}
    torch.testing.assert_close(torch.stack(cached_losses), torch.stack(online_losses), **tolerance)
    for name, value in online.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[name], value, **tolerance)


def test_the_teacher_does_not_run_in_training_steps_after_the_checks(tmp_path):
    x, y = toy_data()
    counter = TeacherCounter()
    cache = CacheTeacherOutputs(dirpath=tmp_path / "cache", verify_epochs=1, verify_batches=1)
    fit(make_module(), indexed_loader(x, y), tmp_path, cache, counter, epochs=3)
    assert counter.calls == 1  # the one check at the start of epoch 0; 12 steps used the cache


def test_reuse_and_invalidation_by_fingerprint(tmp_path):
    x, y = toy_data()
    root = tmp_path / "cache"

    def run(module, x, y) -> CacheTeacherOutputs:
        callback = CacheTeacherOutputs(dirpath=root)
        fit(module, indexed_loader(x, y), tmp_path, callback)
        return callback

    first = run(make_module(), x, y)
    assert first.built
    again = run(make_module(), x, y)
    assert not again.built and again.cache.directory == first.cache.directory

    other_teacher = make_module()
    with torch.no_grad():
        other_teacher.teacher.net[1].weight[0, 0] += 1e-3
    assert run(other_teacher, x, y).built

    edited = x.clone()
    edited[5, 3] += 1e-3
    assert run(make_module(), edited, y).built
    assert run(make_module(), x[:48], y[:48]).built  # another length
    assert len([p for p in root.iterdir() if p.name.startswith("teacher-")]) == 4


class NoisyDataset(Dataset):
    """Random noise augmentation: new inputs every time a sample is read."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index] + 0.1 * torch.randn_like(self.x[index]), self.y[index]


def test_the_guard_stops_training_on_augmented_inputs(tmp_path):
    x, y = toy_data()
    loader = DataLoader(IndexedDataset(NoisyDataset(x, y)), batch_size=16, shuffle=True)
    cache = CacheTeacherOutputs(dirpath=tmp_path / "cache", dataset_id="noisy-toy")
    with pytest.raises(TeacherOutputMismatchError, match=r"epoch 0, sample index \d+.*vary between epochs"):
        fit(make_module(), loader, tmp_path, cache)
    message = str(pytest.raises(TeacherOutputMismatchError, fit, make_module(), loader, tmp_path, cache).value)
    assert "distill/teacher_outputs=live" in message


def test_top_k_trains_and_checks_the_stored_logits(tmp_path):
    x, y = toy_data()
    module = make_module()
    cache = CacheTeacherOutputs(dirpath=tmp_path / "cache", top_k=2, dtype="float32")
    losses = fit(module, indexed_loader(x, y), tmp_path, cache, epochs=2).losses
    assert cache.cache.top_k == 2 and all(torch.isfinite(loss) for loss in losses)


def test_a_dataset_without_indices_is_refused(tmp_path):
    x, y = toy_data()
    with pytest.raises(TypeError, match="wrap it in lightning_kd.data.IndexedDataset"):
        fit(make_module(), DataLoader(TensorDataset(x, y), batch_size=16), tmp_path, CacheTeacherOutputs(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "bfloat16"}, r"dtype must be one of \['float16', 'float32'\], got 'bfloat16'"),
        ({"top_k": 0}, "top_k must be a positive integer or None, got 0"),
        ({"verify_epochs": -1}, "verify_epochs must be an integer >= 0, got -1"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CacheTeacherOutputs(**kwargs)


def test_a_datamodule_that_augments_is_refused_before_training(tmp_path):
    from lightning_kd.data import DigitsDataModule, RandomCropFlip

    data = DigitsDataModule(batch_size=32, with_index=True, augment=RandomCropFlip(padding=1))
    module = DistillationModule(MLP(64, 10, hidden=(8,)), MLP(64, 10, hidden=(8,)))
    callback = CacheTeacherOutputs(dirpath=tmp_path / "outputs")
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[callback])
    augmenting = r"but the datamodule augments them \(RandomCropFlip\(padding=1, flip=True\)\)"
    with pytest.raises(ValueError, match=augmenting):
        trainer.fit(module, datamodule=data)
    assert not (tmp_path / "outputs").exists()
