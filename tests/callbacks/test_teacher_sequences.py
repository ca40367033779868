"""Sequence-level distillation: the teacher's continuations, stored once per teacher and settings, trained on."""

from __future__ import annotations

import json
from typing import Optional

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kd_testing import TinyLM, quiet_trainer, tiny_gpt2
from lightning_kd import DistillationLoss, DistillationModule
from lightning_kd.callbacks import DISTILLATION_CALLBACKS, TeacherSequences
from lightning_kd.callbacks import teacher_sequences as teacher_sequences_module
from lightning_kd.data import IndexedDataset, TokenBlocks
from lightning_kd.models import MLP
from lightning_kd.text import CausalLMDistillationModule, sample_continuations, teacher_continuations

PROMPT, NEW = 3, 4


def token_ids(rows: int = 6, length: int = 8, vocab: int = 23, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


class BlocksData(L.LightningDataModule):
    """A datamodule whose ``train_set`` is a TokenBlocks (or an IndexedDataset of one), made once at setup."""

    def __init__(self, ids: torch.Tensor, indexed: bool = False, batch_size: int = 2):
        super().__init__()
        self.ids, self.indexed, self.batch_size = ids, indexed, batch_size
        self.train_set: Optional[object] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            blocks = TokenBlocks(self.ids)
            self.train_set = IndexedDataset(blocks) if self.indexed else blocks

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size)


class RecordBatches(L.Callback):
    def __init__(self):
        self.batches, self.counted = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(batch)
        self.counted.append(int(outputs["mask"].sum()))


def fit(teacher, data, callback, *callbacks, alpha=0.0, max_steps=2):
    module = CausalLMDistillationModule(
        TinyLM(seed=1), teacher, loss=DistillationLoss(temperature=1.0, alpha=alpha), optimizer=torch.optim.SGD
    )
    quiet_trainer(max_steps=max_steps, callbacks=[callback, *callbacks]).fit(module, datamodule=data)
    return module


def sequences_callback(tmp_path, **kwargs) -> TeacherSequences:
    return TeacherSequences(prompt_length=PROMPT, max_new_tokens=NEW, cache_dir=tmp_path / "sequences", **kwargs)


# --- the function -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: (TinyLM(seed=2), 23), lambda: (tiny_gpt2(seed=2), 53)], ids=["TinyLM", "gpt2"]
)
def test_the_teachers_greedy_continuations_with_labels_only_on_them(make):
    teacher, vocab = make()
    ids = token_ids(vocab=vocab)
    blocks = teacher_continuations(teacher, ids, PROMPT, NEW, batch_size=4)
    expected = sample_continuations(teacher, ids[:, :PROMPT], NEW, greedy=True)
    assert isinstance(blocks, TokenBlocks) and torch.equal(blocks.input_ids, expected)
    assert torch.equal(blocks.labels[:, :PROMPT], torch.full((6, PROMPT), -100))
    assert torch.equal(blocks.labels[:, PROMPT:], expected[:, PROMPT:])


def test_sampled_continuations_follow_the_seed_not_the_batching_of_greedy_ones():
    teacher, ids = TinyLM(seed=2), token_ids()

    def write(**kwargs):
        return teacher_continuations(teacher, ids, PROMPT, NEW, **kwargs).input_ids

    assert torch.equal(write(greedy=False, seed=1), write(greedy=False, seed=1))
    assert not torch.equal(write(greedy=False, seed=1), write(greedy=False, seed=2))
    assert torch.equal(write(batch_size=1), write(batch_size=64))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"prompt_length=9 is longer than the sequences: .* shape \(6, 8\)"):
        teacher_continuations(TinyLM(), token_ids(), 9, NEW)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        teacher_continuations(TinyLM(), token_ids(), PROMPT, NEW, batch_size=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer >= 1, got 0"):
        TeacherSequences(prompt_length=PROMPT, max_new_tokens=0)


# --- the callback -----------------------------------------------------------------------------


def test_the_student_trains_on_the_teachers_sequences_and_the_original_set_comes_back(tmp_path):
    teacher, ids = TinyLM(width=16, seed=2), token_ids()
    data, callback, recorder = BlocksData(ids), sequences_callback(tmp_path), RecordBatches()
    fit(teacher, data, callback, recorder, max_steps=3)
    sequences = callback.sequences
    assert callback.generated and torch.equal(
        sequences.input_ids, teacher_continuations(teacher, ids, PROMPT, NEW).input_ids
    )
    rows = {tuple(row.tolist()) for row in sequences.input_ids}
    for batch in recorder.batches:
        assert all(tuple(row.tolist()) in rows for row in batch["input_ids"])
        assert torch.equal(batch["labels"][:, :PROMPT], torch.full((len(batch["labels"]), PROMPT), -100))
    assert recorder.counted == [2 * NEW] * 3  # alpha = 0: cross-entropy on the teacher's tokens only
    assert data.train_set.input_ids is ids  # the datamodule's own set is back after the fit


def test_the_file_is_reused_for_the_same_teacher_and_settings_and_rewritten_otherwise(tmp_path, monkeypatch):
    teacher, data = TinyLM(width=16, seed=2), BlocksData(token_ids())
    first = sequences_callback(tmp_path)
    fit(teacher, data, first)
    assert first.generated and first.path.exists()
    description = json.loads(first.path.with_suffix(".json").read_text())
    assert description["settings"] == first.settings() and description["num_sequences"] == 6
    assert description["sequence_length"] == PROMPT + NEW and description["fingerprint"] == first.path.stem
    assert {"teacher_fingerprint", "created", "generation_seconds"} <= set(description)

    def refuse(*args, **kwargs):
        raise AssertionError("the stored sequences must be reused, not generated again")

    with monkeypatch.context() as patch:
        patch.setattr(teacher_sequences_module, "teacher_continuations", refuse)
        again = sequences_callback(tmp_path)
        fit(teacher, data, again)  # the same datamodule: its original set is fingerprinted again
        greedy_seed = sequences_callback(tmp_path, seed=9, temperature=0.5)  # no matter to argmax decoding
        fit(teacher, data, greedy_seed)
    assert again.generated is False and again.path == first.path == greedy_seed.path
    assert torch.equal(again.sequences.input_ids, first.sequences.input_ids)

    other_setting = sequences_callback(tmp_path, greedy=False, seed=3)
    fit(teacher, data, other_setting)
    other_teacher = sequences_callback(tmp_path)
    fit(TinyLM(width=16, seed=5), data, other_teacher)
    other_text = sequences_callback(tmp_path)
    fit(teacher, BlocksData(token_ids(seed=1)), other_text)
    assert other_setting.generated and other_teacher.generated and other_text.generated
    paths = {first.path, other_setting.path, other_teacher.path, other_text.path}
    assert len(paths) == 4 and sorted(p.name for p in (tmp_path / "sequences").glob("*.pt")) == sorted(
        p.name for p in paths
    )


def test_new_teacher_weights_in_the_same_module_give_a_new_file(tmp_path):
    """The module's teacher fingerprint is refreshed at on_fit_start, after the callbacks' setup."""
    data = BlocksData(token_ids())
    module = CausalLMDistillationModule(TinyLM(seed=1), TinyLM(width=16, seed=2), optimizer=torch.optim.SGD)
    first, second = sequences_callback(tmp_path), sequences_callback(tmp_path)
    quiet_trainer(max_steps=1, callbacks=[first]).fit(module, datamodule=data)
    module.teacher.load_state_dict(TinyLM(width=16, seed=5).state_dict())
    quiet_trainer(max_steps=1, callbacks=[second]).fit(module, datamodule=data)
    assert first.generated and second.generated and first.path != second.path
    assert module.teacher_fingerprint() in second.path.with_suffix(".json").read_text()


def test_an_indexed_training_set_stays_indexed(tmp_path):
    data, callback, recorder = BlocksData(token_ids(), indexed=True), sequences_callback(tmp_path), RecordBatches()
    fit(TinyLM(width=16, seed=2), data, callback, recorder, alpha=0.5, max_steps=1)
    batch = recorder.batches[0]
    assert torch.equal(batch["input_ids"], callback.sequences.input_ids[batch["index"]])
    assert isinstance(data.train_set, IndexedDataset) and data.train_set.dataset.input_ids.shape == (6, 8)


def test_what_the_callback_needs_is_named(tmp_path):
    callback = sequences_callback(tmp_path)
    classifier = DistillationModule(MLP(4, 2), MLP(4, 2))
    with pytest.raises(TypeError, match=r"TeacherSequences needs a CausalLMDistillationModule, got DistillationModule"):
        quiet_trainer(max_steps=1, callbacks=[callback]).fit(classifier, datamodule=BlocksData(token_ids()))
    module = CausalLMDistillationModule(TinyLM(), TinyLM(seed=2))
    with pytest.raises(TypeError, match=r"train_set is a TokenBlocks .* got no datamodule"):
        quiet_trainer(max_steps=1, callbacks=[callback]).fit(module, DataLoader(TokenBlocks(token_ids())))
    data = BlocksData(token_ids())
    data.train_set = [1, 2, 3]
    with pytest.raises(TypeError, match=r"train_set is a TokenBlocks .* got list"):
        quiet_trainer(max_steps=1, callbacks=[callback]).fit(module, datamodule=data)
    assert TeacherSequences in DISTILLATION_CALLBACKS
