"""Text through kd-train: every language-model method, and the MiniLM classifier, end to end and reported.

The language-model jobs run on small generated plays with tiny GPT-2s; the classifier job on the
real BBC News articles and MiniLM weights that `make venv` installs (nothing is downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd_testing import compose_train, write_plays
from lightning_kd.app.job import run
from lightning_kd.app.report import collect_runs, format_table, summarise

pytest.importorskip("transformers")

METHODS = ["lm_scratch", "lm_forward_kl", "lm_reverse_kl", "lm_jsd", "lm_top_k", "lm_sequence_level", "lm_on_policy"]


def language_model(tmp_path: Path, *overrides: str):
    plays = tmp_path / "plays"
    if not plays.exists():
        write_plays(plays)
    return compose_train(
        tmp_path,
        "experiment=shakespeare_lm",
        f"data.source_dir={plays}",
        "data.val_plays=[beta]",
        "data.test_plays=[epsilon]",
        "data.block_size=16",
        "data.vocab_size=300",
        "data.batch_size=4",
        f"paths.tokenizers={tmp_path / 'tokenizers'}",
        f"paths.teacher_outputs={tmp_path / 'teacher_outputs'}",
        f"paths.teacher_sequences={tmp_path / 'teacher_sequences'}",
        "teacher.net.n_layer=1",
        "teacher.net.n_embd=16",
        "teacher.net.n_head=2",
        "student.n_layer=1",
        "student.n_embd=8",
        "student.n_head=2",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "teacher.train.max_steps=6",
        *overrides,
    )


# Prompts and continuations that fit the tiny models' 16 positions.
METHOD_OVERRIDES = {
    "lm_on_policy": ["distill.on_policy.prompt_length=8", "distill.on_policy.max_new_tokens=8"],
    "lm_sequence_level": [
        "distill.sequence_level.prompt_length=8",
        "distill.sequence_level.max_new_tokens=8",
        "distill.sequence_level.max_sequences=12",
    ],
}


def test_every_language_model_method_runs_through_kd_train_and_is_reported_by_perplexity(tmp_path):
    for method in METHODS:
        cfg = language_model(tmp_path, f"method={method}", *METHOD_OVERRIDES.get(method, []))
        cfg.paths.output_dir = str(tmp_path / "sweep" / method)
        run(cfg)
    runs = collect_runs(tmp_path / "sweep")
    assert len(runs) == 7
    for metrics in runs:
        assert metrics["score"] == {"name": "test/ppl", "mode": "min"}
        assert metrics["monitor"]["name"] == "val/ppl" and metrics["test"]["test/ppl"] > 1
        assert metrics["samples"]["student"] and metrics["samples"]["prompt"]
    distilled = {Path(r["path"]).name: r for r in runs if r["stage"] == "distill"}
    assert distilled["lm_reverse_kl"]["distill"]["divergence"] == "reverse_kl"
    assert distilled["lm_top_k"]["distill"]["teacher_outputs"] == "cached top-32"
    assert distilled["lm_sequence_level"]["distill"]["sequence_level"]["max_new_tokens"] == 8
    assert distilled["lm_on_policy"]["distill"]["on_policy"]["fraction"] == 0.5
    assert "teacher" in distilled["lm_forward_kl"]["samples"]
    # One teacher (stored by the first distillation), one top-k store, one set of generated text.
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    assert len(list((tmp_path / "teacher_sequences").glob("*.pt"))) == 1

    summary = summarise(runs)
    labels = [row["label"] for row in summary["rows"]]
    assert labels == [
        "teacher",
        "scratch student",
        "distilled, sequence-level (T=1, alpha=0)",
        "distilled (T=1, alpha=0.5)",
        "distilled, JSD(0.5) (T=1, alpha=0.5)",
        "distilled, on-policy 0.5 (T=1, alpha=0.5)",
        "distilled, reverse KL (T=1, alpha=0.5)",
        "distilled, top-32 teacher (T=1, alpha=0.5)",
    ]
    assert all(row["n"] == 1 for row in summary["rows"])
    table = format_table(summary)
    assert "test/ppl (mean ± std, lower is better)" in table and "val/ppl (mean ± std, lower is better)" in table
    assert "**teacher**" in table and "scratch student, seed 0" in table


def test_minilm_distils_into_its_first_two_layers_through_kd_train(tmp_path):
    common = [
        "experiment=bbc_news_minilm",
        "data.max_length=16",
        "data.labeled_size=10",
        "data.batch_size=8",
        f"paths.teacher_outputs={tmp_path / 'teacher_outputs'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "teacher.train.max_steps=2",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    ]
    for stage in ("student", "distill"):
        cfg = compose_train(tmp_path, *common, f"stage={stage}")
        cfg.paths.output_dir = str(tmp_path / "sweep" / stage)
        run(cfg)
    runs = {r["stage"]: r for r in collect_runs(tmp_path / "sweep")}
    distilled = runs["distill"]
    assert distilled["score"] == {"name": "test/acc", "mode": "max"} and distilled["include_unlabeled"]
    assert distilled["labeled_size"] == 10 and distilled["distill"]["teacher_outputs"] == "cached"
    # MiniLM-L6 (22.7M parameters) and its embeddings plus first 2 layers.
    assert distilled["params"]["teacher"] == 22_715_141 and distilled["params"]["student"] == 15_617_285
    assert (tmp_path / "sweep" / "distill" / "teacher" / "teacher.pt").is_file()  # a 2-step teacher: not stored
    assert 0 <= runs["student"]["test"]["test/acc"] <= 1 and "samples" not in distilled
    table = format_table(summarise(list(runs.values())))
    assert "test/acc (mean ± std, higher is better)" in table


def test_the_loss_from_hidden_states_runs_through_kd_train(tmp_path):
    cfg = language_model(tmp_path, "method=lm_reverse_kl", "distill.loss_on=hidden", "distill.loss.chunk_size=8")
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["distill"]["chunk_size"] == 8 and metrics["distill"]["divergence"] == "reverse_kl"
    assert metrics["distill"]["loss_on"] == "hidden"
    assert metrics["test"]["test/ppl"] > 1
