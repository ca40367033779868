"""Helpers for the application tests: the real configs, composed and shrunk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

KD_TRAIN = Path(sys.executable).with_name("kd-train")
KD_REPORT = Path(sys.executable).with_name("kd-report")


def compose_train(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real ``train`` config with ``overrides``, writing into ``tmp_path``."""
    with initialize_config_module(config_module="lightning_kd.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.teacher_cache={tmp_path / 'teachers'}",
                "logger=none",
                *overrides,
            ],
        )


def run_cli(executable: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a console script of the installed package in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([str(executable), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory unrelated to the repository."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder
