"""Every option of every config group composes, passes validation, and builds what it names.

A key that is not an argument of its ``_target_`` fails here, so the configs and the code cannot
drift apart.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kd_testing import compose_train
from lightning_kd.app.validate import validate_config

CONF = Path(importlib.import_module("lightning_kd.conf").__file__).parent
GROUPS = sorted(
    str(folder.relative_to(CONF)) for folder in CONF.rglob("*") if folder.is_dir() and list(folder.glob("*.yaml"))
)
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]

# Options that only make sense with text data are composed with the data and networks they need.
LANGUAGE_MODEL = {"data": "shakespeare", "teacher": "gpt_4l192", "student": "gpt_2l128", "distill": "token_level"}
TEXT_CLASSIFIER = {"data": "bbc_news", "teacher": "minilm", "student": "minilm_2l"}
CONVOLUTIONAL = {"teacher": "cnn", "student": "cnn_small"}  # the layers that feature pairs name


def companions(group: str, option: str) -> list[str]:
    """The overrides an option needs beside itself (none for the image-classification options)."""
    language_model = (
        option in ("shakespeare", "token_level")
        or option.startswith(("gpt_", "lm_"))
        or group in ("distill/on_policy", "distill/sequence_level")
    )
    text_classifier = option in ("bbc_news", "encoder_small") or option.startswith("minilm")
    chosen = LANGUAGE_MODEL if language_model else TEXT_CLASSIFIER if text_classifier else {}
    if option in ("fitnets", "attention"):
        chosen = CONVOLUTIONAL
    return [f"{g}={o}" for g, o in chosen.items() if g != group]


def targets(node: Any, key: str = "") -> list[tuple[str, DictConfig]]:
    """Every node with a ``_target_`` below ``node``, with its dotted key."""
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((key, node))
        for name in node:
            if name != "hydra":
                found += targets(node[name], f"{key}.{name}" if key else str(name))
    return found


def check_arguments(key: str, node: DictConfig) -> None:
    """Every key of ``node`` is an argument of its target (the template's rule: nothing filtered)."""
    module, _, name = node._target_.rpartition(".")
    target = getattr(importlib.import_module(module), name)
    arguments = {k: v for k, v in node.items() if not str(k).startswith("_")}
    inspect.signature(target).bind_partial(**arguments)  # raises TypeError for an unknown key


def build_everything(cfg: DictConfig) -> None:
    """Build each object the app builds from this config (the trainer only where it can run here)."""
    for key in ("teacher.net", "student", "distill.loss"):
        assert isinstance(instantiate(OmegaConf.select(cfg, key)), object)
    instantiate(cfg.data, include_unlabeled=False, with_index=False)
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    if cfg.get("lr_scheduler"):
        assert "scheduler" in instantiate(cfg.lr_scheduler)(optimizer)
    for key in ("teacher_outputs", "on_policy", "sequence_level"):
        if cfg.distill.get(key):
            instantiate(cfg.distill[key])
    for node in (cfg.get("callbacks") or {}).values():
        instantiate(node)
    for node in (cfg.get("logger") or {}).values():
        if "TensorBoard" not in node._target_ or importlib.util.find_spec("tensorboard"):  # an optional extra
            instantiate(node)
    if cfg.trainer.accelerator == "cpu":
        instantiate(cfg.trainer, enable_progress_bar=False)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_validates_and_builds(tmp_path, group, option):
    cfg = compose_train(tmp_path, *companions(group, option), f"{group}={option}", "trainer.max_epochs=2")
    validate_config(cfg)
    nodes = targets(cfg)
    assert nodes
    for key, node in nodes:
        check_arguments(key, node)
    build_everything(cfg)


def test_the_groups_are_the_ones_the_readme_documents():
    assert GROUPS == [
        "callbacks",
        "data",
        "distill",
        "distill/on_policy",
        "distill/sequence_level",
        "distill/teacher_outputs",
        "experiment",
        "hparams_search",
        "logger",
        "lr_scheduler",
        "method",
        "optimizer",
        "paths",
        "student",
        "teacher",
        "trainer",
    ]


def test_a_key_that_is_not_an_argument_fails_the_check(tmp_path):
    cfg = compose_train(tmp_path, "+distill.loss.temprature=3")
    with pytest.raises(TypeError, match="temprature"):
        check_arguments("distill.loss", cfg.distill.loss)
