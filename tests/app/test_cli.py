"""The real command line in subprocesses: console scripts, sweeps, reports and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kd_testing import KD_REPORT, KD_TRAIN, run_cli

REPO = Path(__file__).resolve().parents[2]


def test_kd_train_runs_from_another_directory_with_overrides(tmp_path, elsewhere):
    run_dir = tmp_path / "run"
    result = run_cli(
        KD_TRAIN,
        "stage=student",
        "trainer=debug",
        "student=mlp_medium",
        "seed=3",
        "data.batch_size=32",
        f"hydra.run.dir={run_dir}",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stage"] == "student" and metrics["seed"] == 3
    assert metrics["params"]["student"] == 64 * 300 + 300 + 300 * 300 + 300 + 300 * 10 + 10
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_python_dash_m_entry_point_composes_with_a_user_config_dir(tmp_path, elsewhere):
    """Users add their own config groups with --config-dir; ours stay available beside them."""
    (tmp_path / "conf" / "student").mkdir(parents=True)
    (tmp_path / "conf" / "student" / "tiny.yaml").write_text(
        "_target_: lightning_kd.models.MLP\nin_features: ${dataset.in_features}\n"
        "num_classes: ${dataset.num_classes}\nhidden: [7]\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_kd.train",
            "--config-dir",
            str(tmp_path / "conf"),
            "--cfg",
            "job",
            "--resolve",
            "student=tiny",
            "distill=hinton",
            "data=fashion_mnist",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "temperature: 20.0" in result.stdout and "in_features: 784" in result.stdout
    assert "- 7" in result.stdout


def test_multirun_writes_metrics_per_run_and_kd_report_aggregates_them(tmp_path, elsewhere):
    sweep = tmp_path / "sweep"
    result = run_cli(
        KD_TRAIN,
        "-m",
        "stage=distill",
        "trainer.max_epochs=1",  # a whole epoch: the teacher is stored and shared (a debug teacher is not)
        "distill.loss.temperature=2,4",
        "seed=0",
        f"hydra.sweep.dir={sweep}",
        f"paths.trained_teachers={tmp_path / 'teachers'}",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr
    runs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [r["distill"]["temperature"] for r in runs] == [2.0, 4.0]

    report = run_cli(KD_REPORT, str(sweep), cwd=elsewhere)
    assert report.returncode == 0, report.stderr
    assert "| distilled (T=2, alpha=0.9) | 1 |" in report.stdout
    assert "| distilled (T=4, alpha=0.9) | 1 |" in report.stdout
    assert "| teacher | 1 |" in report.stdout  # the one cached teacher, counted once
    summary = json.loads((sweep / "report.json").read_text())
    assert [row["n"] for row in summary["rows"]] == [1, 1, 1]
    assert (sweep / "accuracy_vs_temperature.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.loss.temperature=-1"], "temperature must be finite and > 0, got -1"),
        (["distill.loss.alpha=1.5"], "alpha must be in [0, 1] (it weights the soft term), got 1.5"),
        (["optimizer.lr=-1"], "optimizer.lr must be a finite number > 0, got -1"),
        (["seed=abc"], "seed must be an integer in [0, 4294967295], got 'abc'"),
        (["data=nonexistent"], "Could not find 'data/nonexistent'"),
        (["stage=student", "data=fashion_mnist", "data.root=/nonexistent"], "Fashion-MNIST file not found"),
    ],
)
def test_bad_config_values_give_one_clear_line_not_a_traceback(tmp_path, elsewhere, overrides, message):
    result = run_cli(KD_TRAIN, "trainer=debug", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=elsewhere)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "HYDRA_FULL_ERROR" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 12, result.stderr


def test_kd_report_rejects_a_folder_without_runs(tmp_path):
    result = run_cli(KD_REPORT, str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "no metrics.json found below" in result.stderr


@pytest.mark.slow
def test_the_wheel_ships_every_config(tmp_path):
    """A plain `pip install .` must carry conf/: build the wheel and look inside."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("lightning_kd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "src" / "lightning_kd" / "conf"
    configs = sorted(str(path.relative_to(conf)) for path in conf.rglob("*.yaml"))
    assert "distill/teacher_outputs/cached.yaml" in configs and "lr_scheduler/cosine.yaml" in configs
    for config in [*configs, "__init__.py"]:
        assert f"lightning_kd/conf/{config}" in names, config
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "kd-train = lightning_kd.train:main" in text and "kd-report = lightning_kd.app.report:main" in text
