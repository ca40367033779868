"""Building the objects of a ``kd-train`` job from its config, and fitting them.

Each config node with a ``_target_`` is instantiated as it is: no keys are filtered out here.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_kd.app.errors import ConfigError
from lightning_kd.app.measure import count_parameters
from lightning_kd.app.results import write_results
from lightning_kd.app.samples import text_samples
from lightning_kd.app.task import headline_metric, is_language_model
from lightning_kd.callbacks import DISTILLATION_CALLBACKS, ProgressLog
from lightning_kd.checkpoint_io import AtomicCheckpointIO
from lightning_kd.classifier import ClassifierModule
from lightning_kd.files import save_torch

__all__ = [
    "build_datamodule",
    "build_lr_scheduler",
    "build_network",
    "build_trainer",
    "fit_and_test",
    "resume_checkpoint",
    "supervised_module",
    "teacher_config",
    "train_network",
    "trainer_settings",
]

log = logging.getLogger(__name__)


def build_network(node: DictConfig, key: str) -> nn.Module:
    """Instantiate a network config (``teacher.net``, ``student``), checking that it is an ``nn.Module``."""
    network = instantiate(node)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{key}._target_ must build a torch.nn.Module, got {type(network).__name__}")
    return network


def build_lr_scheduler(cfg: DictConfig) -> Optional[Any]:
    """The ``lr_scheduler`` factory, or ``None`` for ``lr_scheduler=none``."""
    return instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None


def build_datamodule(cfg: DictConfig, include_unlabeled: bool, with_index: bool = False) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` and load it now, so that a missing dataset fails before training."""
    datamodule = instantiate(cfg.data, include_unlabeled=include_unlabeled, with_index=with_index)
    try:
        datamodule.setup("fit")
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data: {error}") from error
    return datamodule


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The run's config as the teacher is trained with it.

    ``teacher.train.max_epochs``, ``max_steps`` and ``augment`` replace the trainer's and the
    data's, so that what interpolates them (a cosine schedule's ``T_max: ${trainer.max_epochs}``)
    follows the teacher's training, not the student's.
    """
    view = copy.deepcopy(cfg)
    for key in ("max_epochs", "max_steps"):
        value = OmegaConf.select(cfg, f"teacher.train.{key}")
        if value is not None:
            OmegaConf.update(view, f"trainer.{key}", value)
    augment = OmegaConf.select(cfg, "teacher.train.augment")
    if augment is not None or "augment" in cfg.data:
        augment = OmegaConf.to_container(augment, resolve=True) if isinstance(augment, DictConfig) else augment
        OmegaConf.update(view, "data.augment", augment, merge=False, force_add=True)
    return view


def trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved ``trainer`` config (the teacher's: pass :func:`teacher_config` of the run's)."""
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    teacher: bool = False,
    distillation: bool = True,
    extra_callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """Instantiate the trainer, callbacks and loggers, writing into ``output_dir``.

    Without ``distillation`` (stages teacher and student), the callbacks that need a
    ``DistillableModule`` are left out. ``teacher`` names the progress lines after the teacher.
    """
    cfg = cfg.copy()
    cfg.paths.output_dir = str(output_dir)
    callbacks = [*extra_callbacks, *(instantiate(c) for c in (cfg.get("callbacks") or {}).values())]
    if not distillation:
        callbacks = [c for c in callbacks if not isinstance(c, DISTILLATION_CALLBACKS)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    settings = trainer_settings(cfg)
    if settings.get("enable_progress_bar") is None:
        settings["enable_progress_bar"] = sys.stderr.isatty()  # no walls of bar updates in logs
    if not settings["enable_progress_bar"]:  # one line per validation instead
        callbacks.append(ProgressLog("teacher" if teacher else cfg.stage))
    settings.update(callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    return instantiate(settings)


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> Optional[str]:
    """The checkpoint named by ``ckpt_path`` ("last": the run folder's last.ckpt), or ``None``."""
    if not cfg.get("ckpt_path"):
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path).absolute()
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run folder given as hydra.run.dir)" if cfg.ckpt_path == "last" else ""
        raise ConfigError(f"ckpt_path: no checkpoint at {path}{hint}")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, foreign file: torch raises several types
        others = sorted(str(p) for p in path.parent.glob("*.ckpt") if p != path)
        raise ConfigError(
            f"ckpt_path: {path} is corrupt or truncated ({type(error).__name__}); other checkpoints of this run: "
            f"{', '.join(others) or 'none'}; pass one of them as ckpt_path=PATH"
        ) from error
    return str(path)


def fit_and_test(
    cfg: DictConfig,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    resume_from: Optional[str] = None,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Fit (from ``resume_from`` if given), then test the best checkpoint (or the final weights).

    Returns:
        The monitored metric (its best value when checkpoints are kept), the test metrics, and
        the metrics logged last before testing (the last validation's).
    """
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    validated = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    monitored = trainer.callback_metrics.get(cfg.monitor)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if best and checkpoint.best_model_score is not None:  # ddp_spawn brings back the path, not the score
        monitored = checkpoint.best_model_score
    if monitored is None:
        raise ConfigError(
            f"monitor={cfg.monitor} was never logged; logged: {', '.join(sorted(trainer.callback_metrics))}"
        )
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
    return float(monitored), {k: float(v) for k, v in tested.items()}, validated


def supervised_module(cfg: DictConfig, network: nn.Module) -> L.LightningModule:
    """The module of stages ``teacher`` and ``student``: cross-entropy on labels, or on next tokens."""
    factories = {"optimizer": instantiate(cfg.optimizer), "lr_scheduler": build_lr_scheduler(cfg)}
    if is_language_model(cfg):
        from lightning_kd.text import CausalLMModule

        return CausalLMModule(network, **factories)
    return ClassifierModule(network, num_classes=cfg.dataset.num_classes, **factories)


def train_network(
    cfg: DictConfig,
    role: str,
    network: nn.Module,
    datamodule: L.LightningDataModule,
    output_dir: Path,
    resume_from: Optional[str] = None,
) -> float:
    """Stages ``teacher`` and ``student``: plain supervised training of one network.

    A teacher is trained with :func:`teacher_config` of the run's config: the caller passes it.
    """
    module = supervised_module(cfg, network)
    trainer = build_trainer(cfg, output_dir, teacher=role == "teacher", distillation=False)
    monitored, tested, _ = fit_and_test(cfg, module, datamodule, trainer, resume_from)
    if not trainer.is_global_zero:  # one process writes the results of a distributed run
        return monitored
    weights = save_torch(output_dir / f"{role}.pt", network.state_dict())
    metric, _ = headline_metric(cfg)
    log.info("%s saved to %s (%s %.4f)", role, weights, metric, tested.get(metric, float("nan")))
    extra = {"samples": text_samples(cfg, datamodule, {role: network})} if is_language_model(cfg) else {}
    write_results(
        cfg,
        role,
        output_dir,
        monitored,
        tested,
        params={role: count_parameters(network)},
        weights=weights.name,
        **extra,
    )
    return monitored
