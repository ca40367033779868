"""kd-train with 2 CPU processes (DDP over gloo), through the real command line."""

from __future__ import annotations

import json

import pytest
import torch

from kd_testing import KD_TRAIN, quiet_trainer, run_cli
from lightning_kd import DistillationModule
from lightning_kd.data import DigitsDataModule
from lightning_kd.models import MLP


def test_two_process_ddp_run_makes_one_folder_and_whole_dataset_metrics(tmp_path, elsewhere):
    run_dir, cache = tmp_path / "run", tmp_path / "teachers"
    result = run_cli(
        KD_TRAIN,
        "stage=distill",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "teacher.max_epochs=2",
        "logger=none",
        f"paths.teacher_cache={cache}",
        f"hydra.run.dir={run_dir}",
        cwd=elsewhere,
    )
    # Exit 0 also means both ranks passed DistillationModule's end-of-fit check that the teacher
    # stayed frozen and in eval mode, and that gloo shut down without aborting.
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "run", "teachers"]
    assert list(elsewhere.iterdir()) == []  # rank 1 made no folder of its own
    assert (run_dir / "train_ddp_process_1.log").is_file()

    # The 2-process test metrics equal a 1-process evaluation of the same weights on the same data.
    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    teacher = MLP(64, 10, hidden=(1200, 1200), dropout=0.3)
    (cached,) = cache.glob("*.pt")
    teacher.load_state_dict(torch.load(cached, weights_only=True))
    student = MLP(64, 10, hidden=(30, 30))
    student.load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))
    single = quiet_trainer().test(DistillationModule(student, teacher), datamodule=DigitsDataModule(), verbose=False)[0]
    assert reported.keys() == single.keys()
    for name, value in single.items():
        assert reported[name] == pytest.approx(value, abs=1e-6), name


def test_a_sweep_with_relaunching_ddp_fails_at_once(tmp_path, elsewhere):
    sweep = tmp_path / "sweep"
    result = run_cli(
        KD_TRAIN, "-m", "trainer=ddp", "trainer.devices=2", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=elsewhere
    )
    assert result.returncode == 1
    assert "use trainer.strategy=ddp_spawn in sweeps" in result.stderr and "Traceback" not in result.stderr
    assert not list(sweep.rglob("metrics.json"))
