"""A BERT-style sequence classifier distils through DistillationModule unchanged (dict batches, .logits)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from kd_testing import quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule
from lightning_kd.fingerprint import module_fingerprint


def tiny_bert(width: int, seed: int) -> torch.nn.Module:
    pytest.importorskip("transformers")  # the optional [text] extra; make test installs it
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40, hidden_size=width, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * width,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def tokenized(count: int = 24, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(count):
        length = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.randint(1, 40, (12,), generator=g) * (torch.arange(12) < length)
        label = int(ids[0] % 3)  # learnable from the first token
        items.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": torch.tensor(label)})
    return items


def test_a_bert_classifier_is_distilled_from_tokenized_dict_batches():
    teacher, student = tiny_bert(32, seed=0), tiny_bert(16, seed=1)
    before = module_fingerprint(teacher)
    module = DistillationModule(student, teacher, loss=DistillationLoss(temperature=2.0, alpha=0.5))
    loader = DataLoader(tokenized(), batch_size=8)
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    assert {"val/acc", "val/teacher_acc", "val/kl", "val/teacher_agreement"} <= set(metrics)
    assert module_fingerprint(module.teacher) == before
    batch = next(iter(loader))
    expected = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    probs = module.predict_step(batch, 0)["probs"]
    torch.testing.assert_close(probs, expected.softmax(-1))
