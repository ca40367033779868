"""The stages of kd-train, run in-process on the real composed configs with trainer=debug."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

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
    assert metrics["monitor"] == {"name": "val/acc", "mode": "max", "value": monitored}
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
    network = MLP(64, 10, hidden=(1200, 1200), dropout=0.3) if stage == "teacher" else MLP(64, 10, hidden=(30, 30))
    network.load_state_dict(torch.load(tmp_dir(cfg) / f"{stage}.pt", weights_only=True))
    assert metrics["params"][stage] == sum(p.numel() for p in network.parameters())


ONE_EPOCH = ("stage=distill", "trainer.max_epochs=1", "teacher.train.max_epochs=1")


def test_distill_trains_a_teacher_once_stores_its_recipe_then_reuses_it(tmp_path, caplog):
    cfg = compose_train(tmp_path, *ONE_EPOCH, "distill.loss.temperature=3", "distill.loss.alpha=0.7")
    run(cfg)
    stored = list((tmp_path / "teachers").glob("digits-mlp-*.pt"))
    assert len(stored) == 1
    recipe = json.loads(stored[0].with_suffix(".json").read_text())
    assert recipe["recipe"]["trainer"]["max_epochs"] == 1 and recipe["recipe"]["seed"] == 0
    assert recipe["recipe"]["net"]["_target_"] == "lightning_kd.models.MLP"
    assert stored[0].stem.endswith(recipe["recipe_hash"])
    assert recipe["config"]["teacher"]["train"]["max_epochs"] == 1 and recipe["config"]["stage"] == "distill"
    first = read_metrics(cfg)
    assert first["stage"] == "distill"
    assert first["distill"] == {
        "temperature": 3.0,
        "alpha": 0.7,
        "objective": "kl",
        "divergence": "forward_kl",
        "beta": 0.5,
        "standardize": False,
        "teacher_outputs": "live",
        "feature_pairs": None,
        "sequence_level": None,
        "on_policy": None,
    }
    assert first["score"] == {"name": "test/acc", "mode": "max"} and first["seconds"] > 0
    assert first["teacher"]["monitor"] == pytest.approx(first["test"]["test/teacher_acc"], abs=1)
    assert first["teacher"]["source"] == str(stored[0])
    assert first["params"]["teacher"] > 100 * first["params"]["student"]
    assert set(first["latency_ms"]) == {"student", "teacher"}
    assert (tmp_dir(cfg) / "student.pt").is_file()

    caplog.set_level(logging.INFO, logger="lightning_kd")
    again = compose_train(tmp_path / "again", *ONE_EPOCH, f"paths.trained_teachers={tmp_path / 'teachers'}")
    run(again)
    reused = [r.getMessage() for r in caplog.records if "teacher reused from" in r.getMessage()]
    assert len(reused) == 1 and f"recipe {stored[0].with_suffix('.json')}" in reused[0]
    assert "max_epochs=1" in reused[0]
    assert not (tmp_dir(again) / "teacher").exists()  # nothing trained this time


def test_a_one_batch_teacher_is_never_reused_by_a_real_run(tmp_path, caplog):
    """`kd-train trainer=debug` then a plain run: the plain run must not distil from a one-batch teacher."""
    teachers = f"paths.trained_teachers={tmp_path / 'teachers'}"
    debug = compose_train(tmp_path / "debug", "stage=distill", "trainer=debug", teachers)
    run(debug)
    assert not (tmp_path / "teachers").exists()  # trained for that run only
    assert (tmp_dir(debug) / "teacher" / "teacher.pt").is_file()
    assert read_metrics(debug)["teacher"]["source"] == str(tmp_dir(debug) / "teacher" / "teacher.pt")

    caplog.set_level(logging.INFO, logger="lightning_kd")
    real = compose_train(tmp_path / "real", *ONE_EPOCH, teachers)
    run(real)
    assert not any("teacher reused" in r.getMessage() for r in caplog.records)
    assert (tmp_dir(real) / "teacher" / "teacher.pt").is_file()  # trained its own


def test_the_teacher_recipe_covers_what_changes_training_and_nothing_else(tmp_path):
    from lightning_kd.app.trained_teachers import partial_training, teacher_recipe, teacher_recipe_hash

    def key(*overrides):
        return teacher_recipe_hash(teacher_recipe(compose_train(tmp_path, *overrides)))

    base = key()
    for changed in (
        "trainer.max_steps=100",
        "trainer.accumulate_grad_batches=2",
        "trainer.precision=bf16-mixed",
        "trainer.gradient_clip_val=1.0",
        "trainer.limit_val_batches=0.5",
        "teacher.train.max_epochs=3",
        "teacher.train.seed=1",
        "teacher=cnn",
        "data.batch_size=32",
        "optimizer.lr=0.01",
        "lr_scheduler=step",
        "monitor_mode=min",
        "teacher.train.augment={_target_:lightning_kd.data.RandomCropFlip}",
    ):
        assert key(changed) != base, changed
    for unchanged in (
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=true",
        "seed=5",
        "student=mlp_medium",
    ):
        assert key(unchanged) == base, unchanged
    assert partial_training(teacher_recipe(compose_train(tmp_path, "trainer=debug"))["trainer"]) == (
        "trainer.fast_dev_run=True"
    )
    assert partial_training(teacher_recipe(compose_train(tmp_path, "trainer.limit_train_batches=3"))["trainer"]) == (
        "trainer.limit_train_batches=3"
    )
    assert partial_training(teacher_recipe(compose_train(tmp_path))["trainer"]) is None
    # No augmentation leaves the recipe as before augmentation existed: stored teachers keep their keys.
    assert "augment" not in teacher_recipe(compose_train(tmp_path, "data=fashion_mnist"))["data"]


def test_distill_from_a_lightning_checkpoint_and_from_a_state_dict(tmp_path):
    teacher_cfg = compose_train(tmp_path / "t", "stage=teacher", "trainer.max_epochs=1")
    run(teacher_cfg)
    lightning_ckpt = tmp_dir(teacher_cfg) / "checkpoints" / "last.ckpt"
    state_dict = tmp_dir(teacher_cfg) / "teacher.pt"
    expected = json.loads((tmp_dir(teacher_cfg) / "metrics.json").read_text())["test"]["test/acc"]
    for path in (lightning_ckpt, state_dict):
        # One step, but the teacher is evaluated on the whole test set (fast_dev_run would use one batch).
        overrides = ("trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
        cfg = compose_train(tmp_path / path.stem, "stage=distill", *overrides, f"teacher.train.checkpoint={path}")
        run(cfg)
        metrics = read_metrics(cfg)
        assert metrics["teacher"]["source"] == str(path)
        # The best checkpoint and the saved teacher are the same weights: same test accuracy.
        assert metrics["teacher"]["test/acc"] == pytest.approx(expected)
    assert not (tmp_path / "teachers").exists()


def test_mismatched_teacher_checkpoint_names_path_and_keys(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(MLP(64, 10, hidden=(30, 30)).state_dict(), path)
    cfg = compose_train(tmp_path, "stage=distill", "trainer=debug", f"teacher.train.checkpoint={path}")
    with pytest.raises(ConfigError) as error:
        run(cfg)
    message = str(error.value)
    assert f"teacher checkpoint {path} does not fit the configured teacher (MLP)" in message
    assert "missing keys [net.4.bias, net.4.weight, net.7.bias, net.7.weight]" in message
    assert "net.1.weight: checkpoint (30, 64) vs network (1200, 64)" in message


def test_missing_teacher_checkpoint_names_the_path(tmp_path):
    cfg = compose_train(
        tmp_path, "stage=distill", "trainer=debug", f"teacher.train.checkpoint={tmp_path / 'nope.ckpt'}"
    )
    with pytest.raises(ConfigError, match=rf"teacher checkpoint not found: {tmp_path / 'nope.ckpt'}"):
        run(cfg)


def test_bad_values_fail_with_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"stage must be one of teacher, student, distill; got stage='teach'"):
        run(compose_train(tmp_path, "stage=teach"))
    with pytest.raises(ConfigError, match=r"distill.loss: temperature must be finite and > 0, got -1"):
        run(compose_train(tmp_path, "stage=distill", "distill.loss.temperature=-1", "trainer=debug"))
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
        "distill.loss.temperature=6",
        "callbacks.temperature_schedule.kind=cosine",
        "callbacks.alpha_schedule.end=0.2",
    )
    callbacks = {type(c): c for c in build_trainer(cfg, tmp_path).callbacks}
    assert {DistillationMonitor, ExportStudent, TemperatureSchedule, AlphaSchedule} <= set(callbacks)
    schedule = callbacks[TemperatureSchedule]
    assert (schedule.start, schedule.end, schedule.kind) == (6.0, 1.0, "cosine")
    assert (callbacks[AlphaSchedule].start, callbacks[AlphaSchedule].end) == (0.9, 0.2)
    run(compose_train(tmp_path / "run2", "trainer=debug", "callbacks=[default,temperature_schedule]"))


def test_distill_with_cached_teacher_outputs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning_kd")
    shared = tmp_path / "shared_outputs"
    settings = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "distill/teacher_outputs=cached"]
    cfg = compose_train(tmp_path, *settings, "distill.teacher_outputs.dtype=float32")
    run(cfg)
    assert read_metrics(cfg)["distill"]["teacher_outputs"] == "cached"
    (cache,) = (tmp_dir(cfg) / "teacher_outputs").glob("teacher-*")
    assert (cache / "logits.npy").is_file()
    assert any("teacher outputs built" in r.getMessage() for r in caplog.records)

    for attempt in ("first", "second"):  # a shared folder: the second run reuses the first's outputs
        caplog.clear()
        again = compose_train(
            tmp_path / attempt,
            *settings,
            f"paths.trained_teachers={tmp_path / 'teachers'}",
            f"distill.teacher_outputs.dirpath={shared}",
        )
        run(again)
    assert any("teacher outputs reused" in r.getMessage() for r in caplog.records)
    assert len(list(shared.glob("teacher-*"))) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["distill/teacher_outputs=cached", "distill.teacher_outputs.dtype=int8"],
            r"distill.teacher_outputs: dtype must be one of .* got 'int8'",
        ),
        (["optimizer.lr=-1"], r"optimizer.lr must be a finite number > 0, got -1"),
        (["optimizer=sgd", "optimizer.momentum=1.5"], r"optimizer.momentum must be a number in \[0, 1\), got 1.5"),
        (["seed=abc"], r"seed must be an integer in \[0, 4294967295\], got 'abc'"),
        (["teacher.train.seed=-1"], r"teacher.train.seed must be an integer in \[0, 4294967295\], got -1"),
        (["trainer.max_epochs=-5"], r"trainer.max_epochs must be an integer >= -1 \(-1: no limit\) or null, got -5"),
        (["trainer.precision=17"], r"trainer.precision must be one of 64, .* got 17"),
        (["trainer.accumulate_grad_batches=0"], r"trainer.accumulate_grad_batches must be an integer >= 1, got 0"),
        (["trainer.limit_train_batches=1.5"], r"trainer.limit_train_batches must be a fraction in \[0, 1\]"),
        (
            ["lr_scheduler=cosine", "trainer.max_epochs=-1"],
            r"lr_scheduler.scheduler.T_max must be an integer >= 1, got -1",
        ),
        (
            ["lr_scheduler=step", "lr_scheduler.interval=hour"],
            r"lr_scheduler: interval must be 'epoch' or 'step', got 'hour'",
        ),
        (["monitor_mode=up"], r"monitor_mode must be 'min' or 'max', got 'up'"),
        (["data.batch_size=0"], r"data.batch_size must be an integer >= 1, got 0"),
        (["torch_threads=0"], r"torch_threads must be an integer >= 1, got 0"),
        (
            ["teacher=cnn", "student=cnn_small", "distill=fitnets", "distill/teacher_outputs=cached"],
            r"distill.feature_pairs \(features.6->features.6\) need the teacher's intermediate features",
        ),
        (
            ["distill=fitnets", "distill.feature_pairs.0.loss=l1"],
            r"distill.feature_pairs: .*loss must be one of",
        ),
        (["teacher.train.max_steps=-3"], r"teacher.train.max_steps must be an integer >= -1 \(-1: no limit\), got -3"),
        (
            ["data=fashion_mnist", "data.augment={_target_:lightning_kd.data.RandomCropFlip}"]
            + ["distill/teacher_outputs=cached"],
            r"distill/teacher_outputs=cached stores the teacher's outputs on fixed inputs, but data.augment",
        ),
        (
            ["teacher.train.augment={_target_:lightning_kd.data.RandomCropFlip,padding:-2}"],
            r"teacher.train.augment: padding must be a non-negative integer \(pixels\), got -2",
        ),
        (
            ["dataset.task=translation"],
            r"dataset.task must be one of classification, language_model, got 'translation'",
        ),
        (
            ["distill=token_level", "distill/on_policy=sampled"],
            r"distill.on_policy applies to language models .* data=digits is a classification task",
        ),
        (
            [
                "data=shakespeare",
                "teacher=gpt_4l192",
                "student=gpt_2l128",
                "distill=token_level",
                "distill.loss_on=all",
            ],
            r"distill.loss_on must be one of \('logits', 'hidden'\), got 'all'",
        ),
        (
            ["data=shakespeare", "teacher=gpt_4l192", "student=gpt_2l128", "distill=token_level"]
            + ["distill/on_policy=sampled", "distill.on_policy.fraction=2"],
            r"distill.on_policy: fraction must be .*got 2",
        ),
    ],
)
def test_bad_values_fail_before_anything_trains(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_train(tmp_path, "stage=distill", *overrides))
    assert not (tmp_path / "teachers").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("distill", ["default", "dkd"])
def test_logit_standardisation_runs_through_kd_train_and_is_recorded(tmp_path, distill):
    cfg = compose_train(tmp_path, *ONE_EPOCH, f"distill={distill}", "distill.loss.standardize=true", "trainer=debug")
    run(cfg)
    assert read_metrics(cfg)["distill"]["standardize"] is True


@pytest.mark.parametrize("method", ["fitnets", "attention"])
def test_feature_distillation_runs_through_kd_train_and_its_adapters_are_not_in_the_student(tmp_path, method):
    cfg = compose_train(tmp_path, *ONE_EPOCH, "teacher=cnn", "student=cnn_small", f"distill={method}", "trainer=debug")
    run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["stage"] == "distill" and 0 <= metrics["test"]["test/acc"] <= 1
    student = torch.load(tmp_dir(cfg) / "student.pt", weights_only=True)
    assert not any("adapter" in key for key in student)
    assert set(student) == set(compose_student_keys())


def compose_student_keys() -> list[str]:
    from lightning_kd.models import CNN

    return list(CNN(1, 10, channels=(16, 32), hidden=64).state_dict())


@pytest.mark.parametrize("override", ["trainer.devices=[0]", "trainer.precision=bf16-mixed", "trainer.max_epochs=null"])
def test_valid_trainer_values_pass_validation(tmp_path, override):
    from lightning_kd.app.validate import validate_config

    validate_config(compose_train(tmp_path, override))


def test_dkd_runs_through_kd_train_with_its_warmup_and_is_reported(tmp_path):
    from lightning_kd.app.report import collect_runs, summarise

    cfg = compose_train(tmp_path, "distill=dkd", "trainer=debug", "callbacks=[default,dkd_warmup]")
    run(cfg)
    distill = read_metrics(cfg)["distill"]
    assert distill["objective"] == "dkd" and distill["beta_nckd"] == 8.0
    labels = [row["label"] for row in summarise(collect_runs(tmp_dir(cfg)))["rows"]]
    assert "DKD (T=4, beta=8)" in labels


def test_the_teacher_trains_with_its_own_epochs_schedule_and_augmentation(tmp_path):
    """teacher.train.* replace the run's values wherever they are used: a cosine schedule's T_max too."""
    from lightning_kd.app.building import build_lr_scheduler, teacher_config

    cfg = compose_train(
        tmp_path,
        "data=fashion_mnist",
        "lr_scheduler=cosine",
        "trainer.max_epochs=2",
        "teacher.train.max_epochs=7",
        "teacher.train.augment={_target_:lightning_kd.data.RandomCropFlip,padding:3}",
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    teacher = teacher_config(cfg)
    assert build_lr_scheduler(teacher)(optimizer)["scheduler"].T_max == 7
    assert build_lr_scheduler(cfg)(optimizer)["scheduler"].T_max == 2  # the student's run is unchanged
    assert teacher.trainer.max_epochs == 7 and cfg.trainer.max_epochs == 2
    assert teacher.data.augment.padding == 3 and cfg.data.augment is None
    # The teacher's augmentation replaces the students' whole, not key by key.
    both = compose_train(
        tmp_path,
        "data=fashion_mnist",
        "data.augment={_target_:lightning_kd.data.RandomCropFlip,padding:1,flip:false}",
        "teacher.train.augment={_target_:torch.nn.Identity}",
    )
    assert OmegaConf.to_container(teacher_config(both).data.augment) == {"_target_": "torch.nn.Identity"}


def test_a_teacher_trained_with_augmentation_beside_an_unaugmented_student(tmp_path, monkeypatch):
    """The teacher's batches are augmented, the student's are not, and the recipe records it."""
    from lightning_kd.data import RandomCropFlip

    calls = []
    monkeypatch.setattr(RandomCropFlip, "__call__", lambda self, x: calls.append(len(x)) or x.flip(-1))
    cfg = compose_train(
        tmp_path,
        *ONE_EPOCH,
        "trainer.limit_train_batches=2",
        "teacher.train.augment={_target_:lightning_kd.data.RandomCropFlip}",
    )
    run(cfg)
    assert len(calls) == 2  # the teacher's two training batches; the student's were not augmented
    assert read_metrics(cfg)["stage"] == "distill"
