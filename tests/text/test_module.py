"""CausalLMDistillationModule: next-token shift, one token count per optimizer step, metrics, the frozen teacher."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kd_testing import TinyLM, quiet_trainer, tiny_gpt2, uneven_token_batches
from lightning_kd import DistillationLoss
from lightning_kd.fingerprint import module_fingerprint
from lightning_kd.losses import TopKLogits, hard_target_loss, soft_target_loss
from lightning_kd.text import CausalLMDistillationModule

SRC = Path(__file__).parents[2] / "src" / "lightning_kd"


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.5)


def one_step(student, teacher, batch_size, accumulate=1, loss=None, clip=None, **module_kwargs):
    """The student after one optimizer step over the four uneven sequences."""
    module = CausalLMDistillationModule(copy.deepcopy(student), teacher, loss=loss, optimizer=sgd, **module_kwargs)
    loader = DataLoader(uneven_token_batches(), batch_size=batch_size)
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate, gradient_clip_val=clip)
    trainer.fit(module, loader)
    return module.student


def assert_same_parameters(a, b, atol=1e-6):
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


def test_the_loss_is_the_per_token_mean_with_the_next_token_shift():
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    module = CausalLMDistillationModule(student, teacher, loss=DistillationLoss(temperature=2.0, alpha=0.3))
    batch = torch.utils.data.default_collate(uneven_token_batches())
    out = module.training_step(batch, 0)
    s = student(**batch)[:, :-1]
    with torch.no_grad():
        t = teacher(**batch)[:, :-1]
    targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    mask = targets != -100
    tokens = int(mask.sum())
    assert tokens == 1 + 2 + 10 + 15
    expected = 0.3 * soft_target_loss(s, t, 2.0, mask) + 0.7 * hard_target_loss(s, targets)
    torch.testing.assert_close(out["loss"] / tokens, expected)  # a sum over the micro-batch's tokens
    assert torch.equal(out["mask"], mask)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_one_micro_batch_or_four_give_the_same_update(clip):
    """Tokens per sequence 1, 2, 10 and 15: a per-micro-batch mean would weigh them 1:1:1:1."""
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    whole = one_step(student, teacher, batch_size=4, clip=clip)
    accumulated = one_step(student, teacher, batch_size=1, accumulate=4, clip=clip)
    assert_same_parameters(whole, accumulated)
    assert any(not torch.equal(a, b) for a, b in zip(whole.parameters(), student.parameters(), strict=True))


def test_a_per_micro_batch_mean_would_not_give_the_same_update():
    """The test above can fail: averaging each micro-batch over its own tokens changes the update."""
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)

    class PerMicroBatchMean(CausalLMDistillationModule):
        def on_before_optimizer_step(self, optimizer):
            self._tokens_this_step = None  # no global count: Lightning's plain 1/accumulate

        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            out["loss"] = out["loss"] / out["mask"].sum()
            return out

    updates = []
    for batch_size, accumulate in ((4, 1), (1, 4)):
        module = PerMicroBatchMean(copy.deepcopy(student), teacher, optimizer=sgd)
        quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate).fit(
            module, DataLoader(uneven_token_batches(), batch_size=batch_size)
        )
        updates.append(module.student)
    with pytest.raises(AssertionError):
        assert_same_parameters(*updates)


def test_the_teacher_stays_frozen_out_of_the_optimizer_and_out_of_checkpoints(tmp_path):
    teacher = tiny_gpt2(seed=3)
    before = module_fingerprint(teacher)
    module = CausalLMDistillationModule(tiny_gpt2(seed=4), teacher, optimizer=sgd)
    loader = DataLoader(uneven_token_batches(vocab=53), batch_size=2)
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(module, loader, loader)
    assert module_fingerprint(module.teacher) == before and not module.teacher.training
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["state_dict"] and not any(key.startswith("teacher.") for key in saved["state_dict"])
    assert "teacher_fingerprint" in saved


def test_validation_metrics_are_recomputed_by_hand():
    student, teacher = tiny_gpt2(seed=5), tiny_gpt2(width=32, seed=6)
    module = CausalLMDistillationModule(student, teacher)
    items = uneven_token_batches(vocab=53, seed=1)
    metrics = quiet_trainer().validate(module, DataLoader(items, batch_size=3), verbose=False)[0]
    batch = torch.utils.data.default_collate(items)
    with torch.no_grad():
        s, t = student(**batch).logits[:, :-1], teacher(**batch).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].bool()
    nll = F.cross_entropy(s[mask], targets[mask])
    assert metrics["val/ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert metrics["val/loss"] == pytest.approx(nll.item(), rel=1e-5)
    assert metrics["val/teacher_ppl"] == pytest.approx(
        math.exp(F.cross_entropy(t[mask], targets[mask]).item()), rel=1e-5
    )
    assert metrics["val/token_acc"] == pytest.approx(
        (s[mask].argmax(-1) == targets[mask]).float().mean().item(), abs=1e-6
    )
    agreement = (s[mask].argmax(-1) == t[mask].argmax(-1)).float().mean().item()
    assert metrics["val/teacher_agreement"] == pytest.approx(agreement, abs=1e-6)
    assert metrics["val/kl"] == pytest.approx(soft_target_loss(s[mask], t[mask], 1.0).item(), rel=1e-5)


def test_the_loss_on_hidden_states_gives_the_update_of_the_loss_on_logits():
    student, teacher = tiny_gpt2(seed=7), tiny_gpt2(width=32, seed=8)
    loss = DistillationLoss(temperature=2.0, alpha=0.5, chunk_size=5)
    on_logits = one_step(student, teacher, batch_size=2, accumulate=2, loss=loss)
    on_hidden = one_step(student, teacher, batch_size=2, accumulate=2, loss=loss, loss_on="hidden")
    assert_same_parameters(on_logits, on_hidden, atol=1e-5)


def test_loss_on_hidden_needs_a_model_with_a_head():
    with pytest.raises(TypeError, match="loss_on='hidden' needs a model with `base_model`.*TinyLM"):
        CausalLMDistillationModule(TinyLM(), TinyLM(), loss_on="hidden")


def test_different_vocabularies_fail_clearly_and_truncation_checks_the_teachers_mass():
    batch = torch.utils.data.default_collate(uneven_token_batches())
    with pytest.raises(ValueError, match=r"student 23 classes, teacher 30.*vocab_alignment='truncate'"):
        CausalLMDistillationModule(TinyLM(), TinyLM(vocab=30)).training_step(batch, 0)
    truncating = DistillationLoss(vocab_alignment="truncate")
    with pytest.raises(ValueError, match=r"probability on the 7 entries beyond the student's 23-token vocabulary"):
        CausalLMDistillationModule(TinyLM(), TinyLM(vocab=30), loss=truncating).training_step(batch, 0)
    padded = TinyLM(vocab=30)
    with torch.no_grad():
        padded.head.bias[23:] = -1e4  # a padded embedding: no mass on the extra entries
    out = CausalLMDistillationModule(TinyLM(), padded, loss=truncating).training_step(batch, 0)
    assert torch.isfinite(out["loss"])


def test_different_tokenizers_are_refused():
    student, teacher = TinyLM(), TinyLM()
    student.tokenizer_identity, teacher.tokenizer_identity = "bpe-4096-a1", "bpe-4096-b2"
    with pytest.raises(ValueError, match=r"different tokenizers \('bpe-4096-a1' vs 'bpe-4096-b2'\)"):
        CausalLMDistillationModule(student, teacher)


def test_a_top_k_teacher_in_the_batch_replaces_the_teacher():
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    batch = torch.utils.data.default_collate(uneven_token_batches())
    with torch.no_grad():
        dense = teacher(**batch)[:, :-1]

    class Refuses(torch.nn.Module):
        def forward(self, **inputs):
            raise AssertionError("the teacher must not run")

    full = CausalLMDistillationModule(student, teacher).training_step(batch, 0)["loss"]
    top = CausalLMDistillationModule(student, Refuses()).training_step(
        {**batch, "teacher_logits": TopKLogits.from_dense(dense, k=23)}, 0
    )["loss"]
    torch.testing.assert_close(top, full)


def test_no_module_of_the_library_imports_the_text_extras_at_import_time():
    """transformers, tokenizers and safetensors are the optional [text] extra: imported inside functions only."""
    extras = {"transformers", "tokenizers", "safetensors"}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.relative_to(SRC)}: {name}" for name in names if name.split(".")[0] in extras]
    assert not found, found


def test_one_process_or_two_give_the_same_update():
    """Two gloo processes, two sequences each (1 + 10 and 2 + 15 counted tokens), against one process."""
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    single = one_step(student, teacher, batch_size=4, clip=0.05)
    module = CausalLMDistillationModule(copy.deepcopy(student), teacher, optimizer=sgd)
    trainer = quiet_trainer(max_steps=1, devices=2, strategy="ddp_spawn", gradient_clip_val=0.05)
    trainer.fit(module, DataLoader(uneven_token_batches(), batch_size=2))
    assert_same_parameters(single, module.student)


@pytest.mark.parametrize("k", [23, 5])
def test_stored_top_k_teacher_outputs_per_token(tmp_path, k):
    """k = V in float32 gives the live teacher's update; a smaller k trains from the stored top-k only."""
    from lightning_kd.callbacks import CacheTeacherOutputs
    from lightning_kd.data import IndexedDataset

    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    live = one_step(student, teacher, batch_size=2, accumulate=2)
    module = CausalLMDistillationModule(copy.deepcopy(student), teacher, optimizer=sgd)
    store = CacheTeacherOutputs(tmp_path, dtype="float32", top_k=k)
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=2, callbacks=[store])
    trainer.fit(module, DataLoader(IndexedDataset(uneven_token_batches()), batch_size=2))
    assert store.built and store.cache.values.shape == (4, 16, k) and store.cache.indices.dtype.name == "int16"
    if k == 23:
        assert_same_parameters(live, module.student, atol=1e-6)
    else:
        assert any(
            not torch.equal(a, b) for a, b in zip(module.student.parameters(), student.parameters(), strict=True)
        )


def test_language_model_teachers_are_stored_as_top_k_only(tmp_path):
    from lightning_kd.callbacks import CacheTeacherOutputs
    from lightning_kd.data import IndexedDataset

    module = CausalLMDistillationModule(TinyLM(), TinyLM())
    trainer = quiet_trainer(max_steps=1, callbacks=[CacheTeacherOutputs(tmp_path)])
    with pytest.raises(ValueError, match=r"stored as top-k logits per token.*CacheTeacherOutputs\(top_k=64\)"):
        trainer.fit(module, DataLoader(IndexedDataset(uneven_token_batches()), batch_size=2))


def test_the_callbacks_work_on_a_language_model(tmp_path):
    """The monitor reads the counted tokens of [B, L, V] outputs; the export keeps a keyword-input student's weights."""
    import json

    from lightning_kd.callbacks import DistillationMonitor, ExportStudent

    monitor, export = DistillationMonitor(grad_every_n_steps=1), ExportStudent(tmp_path / "export")
    module = CausalLMDistillationModule(TinyLM(seed=1), TinyLM(width=16, seed=2), optimizer=sgd)
    loader = DataLoader(uneven_token_batches(), batch_size=2)
    quiet_trainer(max_steps=2, callbacks=[monitor, export]).fit(module, loader, loader)
    assert monitor.last_grad_norms is not None and math.isfinite(monitor.last_grad_norms["grad_norm_ratio"])
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert info["files"] == {"state_dict": "student.pt"}
    reloaded = TinyLM()
    reloaded.load_state_dict(torch.load(tmp_path / "export" / "student.pt", weights_only=True))
    assert_same_parameters(reloaded, module.student, atol=0)
