"""A run killed after epoch k resumes with ckpt_path=last and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch

from kd_testing import KD_TRAIN, run_cli


def read_epoch(path) -> int:
    """The epoch of a checkpoint; -1 while none is there. A half-written file would raise here."""
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else -1


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path, elsewhere):
    common = [
        "stage=distill",
        "trainer.max_epochs=12",
        "teacher.train.max_epochs=1",
        "distill.loss.temperature=2",
        "logger=none",
        f"paths.trained_teachers={tmp_path / 'teachers'}",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    result = run_cli(KD_TRAIN, *common, f"hydra.run.dir={full}", cwd=elsewhere)  # also caches the teacher
    assert result.returncode == 0, result.stderr

    process = subprocess.Popen(
        [str(KD_TRAIN), *common, f"hydra.run.dir={killed}"],
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last, deadline = killed / "checkpoints" / "last.ckpt", time.monotonic() + 300
    while read_epoch(last) < 2:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = read_epoch(last)
    assert 2 <= killed_after < 11 and not (killed / "student.pt").exists()

    result = run_cli(KD_TRAIN, *common, f"hydra.run.dir={killed}", "ckpt_path=last", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert read_epoch(last) == 11

    expected = torch.load(full / "student.pt", weights_only=True)
    resumed = torch.load(killed / "student.pt", weights_only=True)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (full, killed)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["monitor"] == metrics[1]["monitor"]


def test_ckpt_path_last_without_a_checkpoint_is_a_clear_error(tmp_path, elsewhere):
    result = run_cli(KD_TRAIN, "stage=student", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'new'}", cwd=elsewhere)
    assert result.returncode == 1
    assert f"ckpt_path: no checkpoint at {tmp_path / 'new' / 'checkpoints' / 'last.ckpt'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_truncated_last_checkpoint_is_reported_with_the_good_ones(tmp_path, elsewhere):
    run_dir = tmp_path / "run"
    common = ["stage=student", "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run_dir}"]
    assert run_cli(KD_TRAIN, *common, cwd=elsewhere).returncode == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # what a kill mid-write leaves without atomic saves
    (good,) = [p for p in last.parent.glob("*.ckpt") if p != last]
    result = run_cli(KD_TRAIN, *common, "ckpt_path=last", cwd=elsewhere)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"ckpt_path: {last} is corrupt or truncated" in result.stderr
    assert f"other checkpoints of this run: {good}" in result.stderr
