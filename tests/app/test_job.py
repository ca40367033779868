"""The stages of kd-train, run in-process on the real composed configs with trainer=debug."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from kd_testing import compose_train
from lightning_kd.app.errors import ConfigError
from lightning_kd.app.job import run
from lightning_kd.models import MLP


def tmp_dir(cfg) -> Path:
    return Path(cfg.paths.output_dir)


def read_metrics(cfg) -> dict:
    return json.loads((tmp_dir(cfg) / "metrics.json").read_text())


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_supervised_stages_train_save_and_report(tmp_path, stage):
    cfg = compose_train(tmp_path, f"stage={stage}", "trainer=debug")
    monitored = run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["stage"] == stage and metrics["dataset"] == "digits"
    assert metrics["monitor"] == {"name": "val/acc", "value": monitored}
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
    network = MLP(64, 10, hidden=(1200, 1200), dropout=0.3) if stage == "teacher" else MLP(64, 10, hidden=(30, 30))
    network.load_state_dict(torch.load(tmp_dir(cfg) / f"{stage}.pt", weights_only=True))
    assert metrics["params"][stage] == sum(p.numel() for p in network.parameters())


def test_distill_trains_a_teacher_once_then_reuses_it(tmp_path, caplog):
    cfg = compose_train(tmp_path, "stage=distill", "trainer=debug", "distill.temperature=3", "distill.alpha=0.7")
    run(cfg)
    cached = list((tmp_path / "teachers").glob("digits-mlp-*.pt"))
    assert len(cached) == 1
    first = read_metrics(cfg)
    assert first["stage"] == "distill"
    assert first["distill"] == {"temperature": 3.0, "alpha": 0.7, "objective": "kl", "cache_teacher": False}
    assert first["teacher"]["source"] == str(cached[0])
    assert first["params"]["teacher"] > 100 * first["params"]["student"]
    assert set(first["latency_ms"]) == {"student", "teacher"}
    assert (tmp_dir(cfg) / "student.pt").is_file()

    caplog.set_level(logging.INFO, logger="lightning_kd")
    again = compose_train(
        tmp_path / "again", "stage=distill", "trainer=debug", f"paths.teacher_cache={tmp_path / 'teachers'}"
    )
    run(again)
    assert any("teacher reused from" in r.getMessage() for r in caplog.records)
    assert not (tmp_dir(again) / "teacher").exists()  # nothing trained this time


def test_distill_from_a_lightning_checkpoint_and_from_a_state_dict(tmp_path):
    teacher_cfg = compose_train(tmp_path / "t", "stage=teacher", "trainer.max_epochs=1")
    run(teacher_cfg)
    lightning_ckpt = tmp_dir(teacher_cfg) / "checkpoints" / "last.ckpt"
    state_dict = tmp_dir(teacher_cfg) / "teacher.pt"
    expected = json.loads((tmp_dir(teacher_cfg) / "metrics.json").read_text())["test"]["test/acc"]
    for path in (lightning_ckpt, state_dict):
        # One step, but the teacher is evaluated on the whole test set (fast_dev_run would use one batch).
        overrides = ("trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
        cfg = compose_train(tmp_path / path.stem, "stage=distill", *overrides, f"teacher.checkpoint={path}")
        run(cfg)
        metrics = read_metrics(cfg)
        assert metrics["teacher"]["source"] == str(path)
        # The best checkpoint and the saved teacher are the same weights: same test accuracy.
        assert metrics["teacher"]["test/acc"] == pytest.approx(expected)
    assert not (tmp_path / "teachers").exists()


def test_mismatched_teacher_checkpoint_names_path_and_keys(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(MLP(64, 10, hidden=(30, 30)).state_dict(), path)
    cfg = compose_train(tmp_path, "stage=distill", "trainer=debug", f"teacher.checkpoint={path}")
    with pytest.raises(ConfigError) as error:
        run(cfg)
    message = str(error.value)
    assert f"teacher checkpoint {path} does not fit the configured teacher (MLP)" in message
    assert "missing keys [net.4.bias, net.4.weight, net.7.bias, net.7.weight]" in message
    assert "net.1.weight: checkpoint (30, 64) vs network (1200, 64)" in message


def test_missing_teacher_checkpoint_names_the_path(tmp_path):
    cfg = compose_train(tmp_path, "stage=distill", "trainer=debug", f"teacher.checkpoint={tmp_path / 'nope.ckpt'}")
    with pytest.raises(ConfigError, match=rf"teacher checkpoint not found: {tmp_path / 'nope.ckpt'}"):
        run(cfg)


def test_bad_values_fail_with_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"stage must be one of teacher, student, distill; got stage='teach'"):
        run(compose_train(tmp_path, "stage=teach"))
    with pytest.raises(InstantiationException, match=r"temperature must be finite and > 0, got -1"):
        run(compose_train(tmp_path, "stage=distill", "distill.temperature=-1", "trainer=debug"))
    assert not (tmp_path / "teachers").exists()  # failed before training a teacher
    with pytest.raises(ConfigError, match=r"Fashion-MNIST file not found: /nonexistent/train-images.*apt-get install"):
        run(compose_train(tmp_path, "stage=student", "data=fashion_mnist", "data.root=/nonexistent"))


def test_fashion_mnist_config_builds_the_cnn_on_28x28(tmp_path):
    cfg = compose_train(tmp_path, "data=fashion_mnist", "student=cnn_small", "teacher=cnn")
    assert cfg.dataset.input_shape == [1, 28, 28] and cfg.student.in_channels == 1
    assert cfg.student._target_ == "lightning_kd.models.CNN"


def test_distill_exports_the_student_and_logs_the_monitor(tmp_path):
    cfg = compose_train(tmp_path, "stage=distill", "trainer.max_epochs=2", "trainer.limit_train_batches=2")
    run(cfg)
    metrics = read_metrics(cfg)
    assert {"test/ece", "test/teacher_ece", "test/teacher_entropy"} <= set(metrics["test"])
    export = tmp_dir(cfg) / "export"
    info = json.loads((export / "export.json").read_text())
    assert info["num_classes"] == 10 and info["input_shape"] == [1, 8, 8]
    # The best of the 2 epochs by val/acc, the score kd-train reports.
    assert info["weights_from"] in {str(tmp_dir(cfg) / "checkpoints" / f"epoch00{i}.ckpt") for i in (0, 1)}
    assert info["best"] == {"monitor": "val/acc", "score": pytest.approx(metrics["monitor"]["value"])}
    student = MLP(64, 10, hidden=(30, 30))
    student.load_state_dict(torch.load(export / "student.pt", weights_only=True))
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(torch.jit.load(export / "student.ts")(x), student.eval()(x))


def test_supervised_stages_leave_out_the_distillation_callbacks(tmp_path):
    cfg = compose_train(tmp_path, "stage=student", "trainer=debug")
    run(cfg)
    assert not (tmp_dir(cfg) / "export").exists()
    assert "test/ece" not in read_metrics(cfg)["test"]


def test_schedules_are_added_from_the_command_line(tmp_path):
    from lightning_kd.app.job import build_trainer
    from lightning_kd.callbacks import AlphaSchedule, DistillationMonitor, ExportStudent, TemperatureSchedule

    cfg = compose_train(
        tmp_path,
        "callbacks=[default,temperature_schedule,alpha_schedule]",
        "distill.temperature=6",
        "callbacks.temperature_schedule.kind=cosine",
        "callbacks.alpha_schedule.end=0.2",
    )
    callbacks = {type(c): c for c in build_trainer(cfg, tmp_path).callbacks}
    assert {DistillationMonitor, ExportStudent, TemperatureSchedule, AlphaSchedule} <= set(callbacks)
    schedule = callbacks[TemperatureSchedule]
    assert (schedule.start, schedule.end, schedule.kind) == (6.0, 1.0, "cosine")
    assert (callbacks[AlphaSchedule].start, callbacks[AlphaSchedule].end) == (0.9, 0.2)
    run(compose_train(tmp_path / "run2", "trainer=debug", "callbacks=[default,temperature_schedule]"))


def test_distill_with_the_teacher_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning_kd")
    shared = tmp_path / "shared_cache"
    settings = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "distill.cache_teacher=true"]
    cfg = compose_train(tmp_path, *settings, "distill.cache_dtype=float32")
    run(cfg)
    assert read_metrics(cfg)["distill"]["cache_teacher"] is True
    (cache,) = (tmp_dir(cfg) / "teacher_cache").glob("teacher-*")
    assert (cache / "logits.npy").is_file()
    assert any("teacher outputs built" in r.getMessage() for r in caplog.records)

    for attempt in ("first", "second"):  # a shared cache_dir: the second run reuses the first's cache
        caplog.clear()
        again = compose_train(
            tmp_path / attempt, *settings, f"paths.teacher_cache={tmp_path / 'teachers'}", f"distill.cache_dir={shared}"
        )
        run(again)
    assert any("teacher outputs reused" in r.getMessage() for r in caplog.records)
    assert len(list(shared.glob("teacher-*"))) == 1


def test_bad_cache_settings_fail_with_a_clear_error(tmp_path):
    cfg = compose_train(tmp_path, "distill.cache_teacher=true", "distill.cache_dtype=int8")
    with pytest.raises(ConfigError, match="distill: dtype must be one of .* got 'int8'"):
        run(cfg)
