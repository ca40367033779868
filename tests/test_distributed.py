"""Process groups in a user's own program: a clean exit, and ranks that stop together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "user_ddp_fit.py"


def run_user_script(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_twenty_two_process_runs_exit_cleanly(strategy, tmp_path):
    """gloo aborts at interpreter shutdown (SIGABRT, "terminate called") when its group outlives it."""
    for attempt in range(20):
        result = run_user_script(strategy, str(tmp_path), cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "terminate called" not in output, (
            f"{strategy}, run {attempt + 1} of 20: exit status {result.returncode}\n{output[-2000:]}"
        )
        assert "finished: test/acc" in result.stdout


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step_with_the_same_message(tmp_path):
    result = run_user_script("ddp", str(tmp_path), "nan-on-rank-1", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    messages = {path.name: path.read_text() for path in sorted(tmp_path.glob("rank*.txt"))}
    assert sorted(messages) == ["rank0.txt", "rank1.txt"], result.stderr[-2000:]
    assert messages["rank0.txt"] == messages["rank1.txt"]
    assert messages["rank0.txt"].startswith(
        "non-finite training loss at global step 2 (epoch 0, batch 2) on 1 of 2 ranks: "
        "teacher logits is not finite (1 of 2 ranks)"
    )
