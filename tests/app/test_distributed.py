"""kd-train with 2 CPU processes (DDP over gloo), through the real command line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_testing import KD_TRAIN, quiet_trainer, run_cli
from lightning_kd import ClassifierModule, DistillationModule
from lightning_kd.callbacks import DistillationMonitor
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
        "teacher.train.max_epochs=2",
        "logger=none",
        "distill/teacher_outputs=cached",  # rank 0 builds the teacher-output cache, rank 1 waits and reads it
        f"paths.trained_teachers={cache}",
        f"hydra.run.dir={run_dir}",
        cwd=elsewhere,
    )
    # Exit 0 also means both ranks passed DistillationModule's end-of-fit check that the teacher
    # stayed frozen and in eval mode, and that gloo shut down without aborting.
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "run", "teachers"]
    assert list(elsewhere.iterdir()) == []  # rank 1 made no folder of its own
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in run_dir.glob("export*")) == ["export"]  # one process exported
    assert len(list((run_dir / "teacher_outputs").iterdir())) == 1  # one complete store, no leftovers

    # The 2-process test metrics equal a 1-process evaluation of the same weights on the same data.
    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    teacher = MLP(64, 10, hidden=(1200, 1200), dropout=0.3)
    (cached,) = cache.glob("*.pt")
    teacher.load_state_dict(torch.load(cached, weights_only=True))
    student = MLP(64, 10, hidden=(30, 30))
    student.load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))
    # With the monitor: its calibration errors and entropy are reduced across ranks, exactly too.
    single = quiet_trainer(callbacks=[DistillationMonitor()]).test(
        DistillationModule(student, teacher), datamodule=DigitsDataModule(), verbose=False
    )[0]
    assert reported.keys() == single.keys() and "test/ece" in single
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_through_torchrun(tmp_path, elsewhere):
    """Multi-node as on a cluster, on one machine: two torchrun "nodes", one CPU process each."""
    run_dir, port = tmp_path / "run", free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    nodes = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "lightning_kd.train",
                "stage=student",
                "trainer=ddp",
                "trainer.devices=1",
                "trainer.num_nodes=2",
                "trainer.max_epochs=2",
                "logger=none",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]

    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    student = MLP(64, 10, hidden=(30, 30))
    student.load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))
    single = quiet_trainer().test(ClassifierModule(student), datamodule=DigitsDataModule(), verbose=False)[0]
    for name, value in single.items():
        assert reported[name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.slow
def test_a_sweep_with_ddp_spawn_runs_each_job_once(tmp_path, elsewhere):
    sweep = tmp_path / "sweep"
    result = run_cli(
        KD_TRAIN,
        "-m",
        "stage=student",
        "trainer=ddp_spawn",
        "trainer.max_epochs=1",
        "logger=none",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.rglob("metrics.json"))
    assert runs == ["0", "1"]
    assert [json.loads((sweep / r / "metrics.json").read_text())["seed"] for r in runs] == [0, 1]
