"""experiment=fashion_mnist_methods, reduced: every method through kd-train, then its kd-report table.

The real experiment runs on the full Fashion-MNIST (`make methods-table`); this one runs each
method once, for one epoch, on 300 generated images, so that the configs, the teacher-output
store, the feature pairs and the report's methods table are exercised on every change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kd_testing import compose_train, write_fashion_mnist
from lightning_kd.app.job import run
from lightning_kd.app.report import collect_runs, format_table, summarise

# (method, student): FitNets and attention transfer name convolution layers, so CNN students only.
RUNS = [
    (method, student)
    for method in ("fm_scratch", "fm_kd", "fm_kd_standardized", "fm_dkd")
    for student in ("mlp_medium", "cnn_small")
] + [("fm_fitnets", "cnn_small"), ("fm_attention", "cnn_small")]


@pytest.fixture
def restore_threads():
    """The experiment sets torch_threads=1 for the whole process: give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_method_runs_through_kd_train_and_the_report_tables_each(tmp_path, restore_threads):
    root = write_fashion_mnist(tmp_path / "fashion_mnist", train=300, test=100)
    reduced = [
        "experiment=fashion_mnist_methods",
        f"data.root={root}",
        "data.val_size=100",
        "data.batch_size=50",
        "trainer.max_epochs=1",
        "teacher.train.max_epochs=1",
        f"paths.teacher_outputs={tmp_path / 'teacher_outputs'}",
    ]
    for method, student in RUNS:
        folder = tmp_path / "runs" / f"{method}-{student}"
        run(
            compose_train(
                folder, *reduced, f"method={method}", f"student={student}", f"paths.trained_teachers={tmp_path}/t"
            )
        )
        metrics = json.loads((folder / "run" / "metrics.json").read_text())
        assert metrics["stage"] == ("student" if method == "fm_scratch" else "distill")
        if method in ("fm_kd", "fm_kd_standardized", "fm_dkd"):  # logit-only: the shared store
            assert metrics["distill"]["teacher_outputs"] == "cached"
        if method in ("fm_fitnets", "fm_attention"):  # features need the live teacher
            assert metrics["distill"]["teacher_outputs"] == "live" and metrics["distill"]["feature_pairs"]

    (stored,) = (tmp_path / "t").glob("*.json")  # one teacher, trained once with its augmentation
    recipe = json.loads(stored.read_text())["recipe"]
    assert recipe["data"]["augment"]["_target_"] == "lightning_kd.data.RandomCropFlip"
    assert recipe["net"]["channels"] == [32, 64, 128]
    assert len(list(Path(tmp_path / "teacher_outputs").rglob("*.json"))) >= 1

    summary = summarise(collect_runs(tmp_path / "runs"))
    methods = {(m["student"], m["method"]) for m in summary["methods"]}
    logit_methods = {"scratch", "KD", "KD + logit standardisation", "DKD"}
    assert methods == {("MLP", m) for m in logit_methods} | {("CNN", m) for m in logit_methods} | {
        ("CNN", "FitNets hints + KD"),
        ("CNN", "attention transfer + KD"),
    }
    assert "| CNN | attention transfer + KD |" in format_table(summary)
