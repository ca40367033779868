"""Checks that need a CUDA GPU (Lightning runs FSDP on GPUs only). benchmarks/gpu_check.sh runs them."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy

from kd_testing import BatchNormDropoutNet, quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule, soft_target_loss
from lightning_kd.data import DigitsDataModule
from lightning_kd.fingerprint import module_fingerprint
from lightning_kd.models import MLP

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_soft_loss_of_bf16_logits_on_cuda_is_float32():
    s = torch.randn(64, 10, device="cuda")
    t = torch.randn(64, 10, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = soft_target_loss(s.bfloat16(), t.bfloat16(), 4.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(soft_target_loss(s, t, 4.0).item(), rel=1e-2)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_gpu_fit_keeps_the_teacher_frozen(strategy):
    teacher = BatchNormDropoutNet(in_features=64, num_classes=10, width=64)
    before = module_fingerprint(teacher)
    module = DistillationModule(MLP(64, 10, hidden=(30,)), teacher, loss=DistillationLoss(4.0, 0.5))
    chosen = FSDPStrategy(use_orig_params=True) if strategy == "fsdp" else strategy
    trainer = quiet_trainer(accelerator="gpu", devices=1, strategy=chosen, precision="bf16-mixed", max_epochs=2)
    trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.callback_metrics["val/acc"] > 0.2
    assert module_fingerprint(module.teacher) == before
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}


def test_fsdp_gives_one_full_teacher_identity_and_exports_the_whole_student(tmp_path):
    """Under FSDP the teacher's fingerprint, the output store and the export see the full networks."""
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_kd.callbacks import CacheTeacherOutputs, ExportStudent
    from lightning_kd.data import IndexedDataset

    teacher = MLP(64, 10, hidden=(64,))
    student = MLP(64, 10, hidden=(30,))
    before = module_fingerprint(teacher)
    module = DistillationModule(student, teacher)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    train = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=32)
    export = ExportStudent(tmp_path / "export", onnx=False)
    trainer = quiet_trainer(
        accelerator="gpu",
        devices=1,
        strategy=FSDPStrategy(use_orig_params=True),
        max_epochs=1,
        callbacks=[CacheTeacherOutputs(tmp_path / "outputs", dtype="float32"), export],
    )
    trainer.fit(module, train)
    assert module.teacher_fingerprint() == before
    exported = torch.export.load(str(export.export_dir / "student.pt2")).module()
    reference = MLP(64, 10, hidden=(30,))
    reference.load_state_dict(torch.load(export.export_dir / "student.pt", weights_only=True))
    torch.testing.assert_close(exported(x[:5]), reference.eval()(x[:5]))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_gpt2_pair_distils_on_one_gpu_in_bf16(strategy):
    """The language-model case: a Hugging Face teacher frozen (and sharded under FSDP), bf16-mixed."""
    from torch.utils.data import DataLoader

    from kd_testing import tiny_gpt2, uneven_token_batches
    from lightning_kd.text import CausalLMDistillationModule

    teacher = tiny_gpt2(width=64, layers=2, seed=0)
    before = module_fingerprint(teacher)
    module = CausalLMDistillationModule(tiny_gpt2(width=32, seed=1), teacher)
    chosen = FSDPStrategy(use_orig_params=True) if strategy == "fsdp" else strategy
    trainer = quiet_trainer(accelerator="gpu", devices=1, strategy=chosen, precision="bf16-mixed", max_epochs=2)
    loader = DataLoader(uneven_token_batches(vocab=53) * 4, batch_size=4)
    trainer.fit(module, loader, loader)
    assert torch.isfinite(trainer.callback_metrics["val/ppl"])
    assert module.teacher_fingerprint() == before
