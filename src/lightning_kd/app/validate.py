"""Check a composed ``kd-train`` config before anything is built or trained.

A bad value fails at once, in one line that names the key, the value and what was expected,
instead of after the teacher has trained or deep inside Lightning.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_kd.app.errors import ConfigError
from lightning_kd.app.task import TASKS
from lightning_kd.features import parse_feature_pairs
from lightning_kd.text.module import LOSS_ON

__all__ = ["STAGES", "validate_config"]

STAGES = ("teacher", "student", "distill")
PRECISIONS = (
    "64", "64-true", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
MAX_SEED = 2**32 - 1  # numpy's limit, which Lightning's seed_everything respects


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: _number(v) and v > 0, "a finite number > 0")
NON_NEGATIVE: Rule = (lambda v: _number(v) and v >= 0, "a finite number >= 0")
POSITIVE_INT: Rule = (lambda v: _integer(v) and v >= 1, "an integer >= 1")
EPOCHS: Rule = (lambda v: v is None or (_integer(v) and v >= -1), "an integer >= -1 (-1: no limit) or null")
FRACTION_OR_COUNT: Rule = (
    lambda v: v is None or (_integer(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0),
    "a fraction in [0, 1], a number of batches >= 0, or null",
)

# Hyperparameters of the optimizer and lr_scheduler nodes, by argument name.
ARGUMENT_RULES: dict[str, Rule] = {
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "eps": POSITIVE,
    "T_max": POSITIVE_INT,
    "step_size": POSITIVE_INT,
    "gamma": POSITIVE,
    "factor": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "patience": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "eta_min": NON_NEGATIVE,
}

TRAINER_RULES: dict[str, Rule] = {
    "max_epochs": EPOCHS,
    "max_steps": (lambda v: _integer(v) and v >= -1, "an integer >= -1 (-1: no limit)"),
    "limit_train_batches": FRACTION_OR_COUNT,
    "limit_val_batches": FRACTION_OR_COUNT,
    "limit_test_batches": FRACTION_OR_COUNT,
    "accumulate_grad_batches": POSITIVE_INT,
    "gradient_clip_val": (lambda v: v is None or (_number(v) and v >= 0), "a finite number >= 0 or null"),
    "log_every_n_steps": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "check_val_every_n_epoch": (lambda v: v is None or (_integer(v) and v >= 1), "an integer >= 1 or null"),
    "val_check_interval": (
        lambda v: v is None or (_integer(v) and v >= 1) or (isinstance(v, float) and 0.0 < v <= 1.0),
        "a fraction in (0, 1], a number of batches >= 1, or null",
    ),
    "precision": (lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "num_nodes": POSITIVE_INT,
    "devices": (
        lambda v: v == "auto" or (_integer(v) and v >= -1 and v != 0) or isinstance(v, (list, str)),
        "an integer >= 1, -1 (all), 'auto' or a list of device indices",
    ),
}


def _check(key: str, value: Any, rule: Rule) -> None:
    accept, expected = rule
    if not accept(value):
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _resolved(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    except Exception as error:  # an interpolation that cannot resolve
        raise ConfigError(f"{key}: {error}") from error


def _check_arguments(cfg: DictConfig, key: str) -> None:
    """Apply ``ARGUMENT_RULES`` to the node ``key`` and to the nodes nested in it."""
    node = _resolved(cfg, key)
    if not isinstance(node, DictConfig):
        return
    for name in node:
        value = _resolved(cfg, f"{key}.{name}")
        if isinstance(value, DictConfig):
            _check_arguments(cfg, f"{key}.{name}")
        elif name in ARGUMENT_RULES:
            _check(f"{key}.{name}", value, ARGUMENT_RULES[name])


def _build(key: str, build: Callable[[], Any]) -> Any:
    """Run ``build``; a constructor's ``ValueError`` or ``TypeError`` becomes a ``ConfigError`` naming ``key``."""
    try:
        return build()
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(f"{key}: {cause}") from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{key}: {error}") from error


def validate_config(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` for the first bad value of ``cfg``; return ``None`` if all are good.

    Checks the stage, seeds and monitor mode, the trainer's common values, the optimizer's and
    learning-rate scheduler's arguments (by rule, then by building them on a dummy parameter),
    and builds the distillation loss.
    """
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got stage={cfg.stage!r}")
    seed_rule: Rule = (lambda v: _integer(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")
    _check("seed", _resolved(cfg, "seed"), seed_rule)
    _check("monitor_mode", cfg.monitor_mode, (lambda v: v in ("min", "max"), "'min' or 'max'"))
    for name, rule in TRAINER_RULES.items():
        if name in cfg.trainer:
            _check(f"trainer.{name}", _resolved(cfg, f"trainer.{name}"), rule)
    _check("teacher.train.seed", _resolved(cfg, "teacher.train.seed"), seed_rule)
    _check("teacher.train.max_epochs", _resolved(cfg, "teacher.train.max_epochs"), EPOCHS)
    if OmegaConf.select(cfg, "teacher.train.max_steps") is not None:
        _check("teacher.train.max_steps", _resolved(cfg, "teacher.train.max_steps"), TRAINER_RULES["max_steps"])
    if cfg.get("torch_threads") is not None:
        _check("torch_threads", _resolved(cfg, "torch_threads"), POSITIVE_INT)
    task = cfg.dataset.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"dataset.task must be one of {', '.join(TASKS)}, got {task!r}")
    if "batch_size" in cfg.data:
        _check("data.batch_size", _resolved(cfg, "data.batch_size"), POSITIVE_INT)

    _check_arguments(cfg, "optimizer")
    optimizer = _build("optimizer", lambda: instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))]))
    if cfg.get("lr_scheduler"):
        _check_arguments(cfg, "lr_scheduler")
        _build("lr_scheduler", lambda: instantiate(cfg.lr_scheduler)(optimizer))
    for key in ("data.augment", "teacher.train.augment"):
        if OmegaConf.select(cfg, key) is not None:
            _build(key, lambda key=key: instantiate(OmegaConf.select(cfg, key)))
    if cfg.stage == "distill":
        _build("distill.loss", lambda: instantiate(cfg.distill.loss))
        for key in ("teacher_outputs", "on_policy", "sequence_level"):
            if cfg.distill.get(key):
                _build(f"distill.{key}", lambda key=key: instantiate(cfg.distill[key]))
        _check_language_model_options(cfg)
        if cfg.distill.get("teacher_outputs") and OmegaConf.select(cfg, "data.augment") is not None:
            raise ConfigError(
                "distill/teacher_outputs=cached stores the teacher's outputs on fixed inputs, but data.augment "
                "changes the training inputs every epoch: set data.augment=null for the student (the teacher keeps "
                "teacher.train.augment) or use distill/teacher_outputs=live"
            )
        if cfg.distill.get("feature_pairs"):
            _check_feature_pairs(cfg)


def _check_feature_pairs(cfg: DictConfig) -> None:
    """Feature pairs parse, belong to a classifier, and need the live teacher (its features are not stored)."""
    pairs = _build("distill.feature_pairs", lambda: parse_feature_pairs(_resolved(cfg, "distill.feature_pairs")))
    if cfg.dataset.get("task", "classification") != "classification":
        raise ConfigError(
            "distill.feature_pairs applies to classifiers (DistillationModule); not to language models yet"
        )
    if cfg.distill.get("teacher_outputs"):
        raise ConfigError(
            f"distill.feature_pairs ({', '.join(p.name for p in pairs)}) need the teacher's intermediate features "
            "on every step, which are not stored: use distill/teacher_outputs=live"
        )


def _check_language_model_options(cfg: DictConfig) -> None:
    """Options of token-level distillation need a language model; a classifier run refuses them."""
    language_model = cfg.dataset.get("task", "classification") == "language_model"
    if language_model:
        _check("distill.loss_on", cfg.distill.get("loss_on") or "logits", (lambda v: v in LOSS_ON, f"one of {LOSS_ON}"))
        return
    given = [key for key in ("on_policy", "sequence_level") if cfg.distill.get(key)]
    if (cfg.distill.get("loss_on") or "logits") != "logits":
        given.append("loss_on")
    if given:
        raise ConfigError(
            f"distill.{given[0]} applies to language models (data=shakespeare, dataset.task=language_model); "
            f"data={cfg.dataset.get('name')} is a classification task"
        )
