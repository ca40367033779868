"""The teacher of ``stage=distill``: loaded from a checkpoint, reused from the store, or trained now.

A teacher trained by ``kd-train`` is stored under ``paths.trained_teachers`` as ``<name>.pt``
with its recipe beside it (``<name>.json``): everything that changes its training (network,
data, optimizer, learning-rate schedule, the trainer settings it was trained with, seed and
monitor). The name holds a hash of that recipe, so a run with any other recipe trains its own.
A teacher trained on a fraction of the data (``fast_dev_run``, ``limit_train_batches``, ...) is
never stored for later runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_kd.app.building import (
    build_datamodule,
    build_network,
    teacher_config,
    train_network,
    trainer_settings,
)
from lightning_kd.app.errors import ConfigError
from lightning_kd.app.teacher_weights import TeacherCheckpointError, load_teacher_weights
from lightning_kd.files import save_json, save_torch

__all__ = ["obtain_teacher", "partial_training", "teacher_recipe", "teacher_recipe_hash"]

log = logging.getLogger(__name__)

# Trainer settings that change what is shown or where it goes, not the trained weights.
PRESENTATION_SETTINGS = ("enable_progress_bar", "enable_model_summary", "default_root_dir", "log_every_n_steps")
# Trainer settings that train on part of the data; such a teacher is not stored for later runs.
PARTIAL_SETTINGS = ("limit_train_batches", "limit_val_batches", "overfit_batches")


def teacher_recipe(cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines the teacher that ``stage=distill`` trains, resolved."""
    cfg = teacher_config(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("include_unlabeled", None)  # the teacher never sees the unlabeled transfer set
    data.pop("tokenizer_dir", None)  # where the tokenizer is cached; it is keyed by the text and its settings
    if data.get("augment") is None:
        data.pop("augment", None)  # keeps the keys of teachers stored before augmentation existed
    trainer = trainer_settings(cfg)
    for key in PRESENTATION_SETTINGS:
        trainer.pop(key, None)
    return {
        "net": OmegaConf.to_container(cfg.teacher.net, resolve=True),
        "seed": cfg.teacher.train.seed,
        "data": data,
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "lr_scheduler": OmegaConf.to_container(cfg.lr_scheduler, resolve=True) if cfg.get("lr_scheduler") else None,
        "trainer": trainer,
        "monitor": {"name": cfg.monitor, "mode": cfg.monitor_mode},
    }


def teacher_recipe_hash(recipe: dict[str, Any]) -> str:
    """A short hash of a recipe (16 hex digits)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partial_training(trainer: dict[str, Any]) -> Optional[str]:
    """The setting that makes a teacher train on part of the data (``"key=value"``), or ``None``."""
    if trainer.get("fast_dev_run"):
        return f"trainer.fast_dev_run={trainer['fast_dev_run']}"
    for key in PARTIAL_SETTINGS:
        value = trainer.get(key)
        if value not in (None, 0, 1.0) or (key == "limit_train_batches" and value == 0):
            return f"trainer.{key}={value}"
    return None


def obtain_teacher(cfg: DictConfig, output_dir: Path) -> tuple[nn.Module, str]:
    """The teacher from ``teacher.train.checkpoint``, from the store, or trained now (and stored).

    Returns:
        The teacher network and the path of the weights it was loaded from or saved to.
    """
    teacher = build_network(cfg.teacher.net, "teacher.net")
    if cfg.teacher.train.checkpoint:
        path = Path(cfg.teacher.train.checkpoint).expanduser().absolute()
        try:
            load_teacher_weights(teacher, path)
        except TeacherCheckpointError as error:
            raise ConfigError(f"teacher.train.checkpoint: {error}") from error
        log.info("teacher loaded from %s", path)
        return teacher, str(path)

    recipe = teacher_recipe(cfg)
    name = f"{cfg.dataset.name}-{type(teacher).__name__.lower()}-{teacher_recipe_hash(recipe)}"
    stored = Path(cfg.paths.trained_teachers).absolute() / f"{name}.pt"
    partial = partial_training(recipe["trainer"])
    if stored.is_file() and partial is None:
        load_teacher_weights(teacher, stored)
        log.info("teacher reused from %s (%s)", stored, _describe(stored.with_suffix(".json")))
        return teacher, str(stored)

    where = output_dir / "teacher"
    if partial is None:
        log.info("no teacher.train.checkpoint given: training the teacher first (stored as %s)", stored)
    else:
        log.info("training a teacher for this run only, in %s: %s trains it on part of the data", where, partial)
    L.seed_everything(cfg.teacher.train.seed, workers=True, verbose=False)
    teacher = build_network(cfg.teacher.net, "teacher.net")
    view = teacher_config(cfg)
    train_network(view, "teacher", teacher, build_datamodule(view, include_unlabeled=False), where)
    if partial is not None:
        return teacher, str(where / "teacher.pt")
    _store(stored, teacher, recipe, output_dir, _resolved_config(cfg))
    return teacher, str(stored)


def _resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The whole config of the run that trained the teacher, resolved where it can be."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside a Hydra run
        return OmegaConf.to_container(cfg, resolve=False)


@rank_zero_only
def _store(path: Path, teacher: nn.Module, recipe: dict[str, Any], output_dir: Path, config: dict[str, Any]) -> None:
    """Write the recipe and the resolved config, then the weights (their presence marks a complete entry)."""
    entry = {
        "recipe_hash": path.stem.rsplit("-", 1)[-1],
        "trained_in": str(output_dir / "teacher"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe,  # what the hash is of
        "config": config,  # the whole config of the run that trained it
    }
    save_json(path.with_suffix(".json"), entry)
    save_torch(path, teacher.state_dict())


def _describe(recipe_file: Path) -> str:
    """One line on where a stored teacher came from, for the log."""
    try:
        entry = json.loads(recipe_file.read_text())
    except (OSError, ValueError):
        return f"no readable recipe at {recipe_file}"
    recipe = entry.get("recipe", {})
    trainer = recipe.get("trainer", {})
    return (
        f"recipe {recipe_file}: trained in {entry.get('trained_in')} on {entry.get('date')}, "
        f"{recipe.get('net', {}).get('_target_')}, max_epochs={trainer.get('max_epochs')}, "
        f"max_steps={trainer.get('max_steps')}, seed={recipe.get('seed')}"
    )
