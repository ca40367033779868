"""The three stages of ``kd-train``: teacher, student (the scratch baseline) and distill."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_kd.app.errors import ConfigError
from lightning_kd.app.measure import count_parameters, forward_latency_ms
from lightning_kd.app.results import METRICS_FILE
from lightning_kd.app.teacher_weights import TeacherCheckpointError, load_teacher_weights
from lightning_kd.callbacks import DISTILLATION_CALLBACKS, CacheTeacherOutputs
from lightning_kd.checkpoint_io import AtomicCheckpointIO
from lightning_kd.classifier import ClassifierModule
from lightning_kd.files import save_json, save_torch
from lightning_kd.module import DistillationModule

__all__ = ["STAGES", "run"]

log = logging.getLogger(__name__)

STAGES = ("teacher", "student", "distill")
# Keys of the `teacher` config node that configure its training, not its network class.
TEACHER_SETTINGS = ("checkpoint", "seed", "max_epochs")
# Keys of the `distill` config node that configure the teacher-output cache, not the loss.
CACHE_SETTINGS = ("cache_teacher", "cache_dtype", "cache_top_k", "cache_dir")


def run(cfg: DictConfig) -> float:
    """Run the stage ``cfg.stage`` and return the monitored metric (for sweepers).

    Each run writes ``metrics.json`` into ``cfg.paths.output_dir``, and the trained network:
    ``teacher.pt`` or ``student.pt`` (a plain state_dict).
    """
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got stage={cfg.stage!r}")
    _refuse_relaunching_strategy_in_a_sweep(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.stage == "distill":
        return _distill(cfg, output_dir)
    resume_from = resume_checkpoint(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    network = build_network(cfg[cfg.stage], cfg.stage)
    datamodule = build_datamodule(cfg, include_unlabeled=False)
    return _train_classifier(cfg, cfg.stage, network, datamodule, output_dir, resume_from)


def _refuse_relaunching_strategy_in_a_sweep(cfg: DictConfig) -> None:
    """``strategy=ddp`` starts its other processes by re-running the command line: in a Hydra
    multirun each of them would run the whole sweep again. Fail before anything runs."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    strategy = str(cfg.trainer.get("strategy") or "")
    one_process = cfg.trainer.get("devices") in (1, "1") and int(cfg.trainer.get("num_nodes") or 1) == 1
    if strategy.startswith("ddp") and "spawn" not in strategy and not one_process:
        raise ConfigError(
            f"trainer.strategy={strategy} re-runs the command line in each new process, which in a sweep "
            "(-m) would run the whole sweep again: use trainer.strategy=ddp_spawn in sweeps, or launch each "
            "run separately without -m"
        )


# --- building blocks from the config --------------------------------------------------------


def build_network(node: DictConfig, role: str) -> nn.Module:
    """Instantiate the ``teacher`` or ``student`` network, leaving out the teacher's settings."""
    config = OmegaConf.to_container(node, resolve=True)
    for key in TEACHER_SETTINGS:
        config.pop(key, None)
    network = instantiate(config)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{role}._target_ must build a torch.nn.Module, got {type(network).__name__}")
    return network


def build_datamodule(cfg: DictConfig, include_unlabeled: bool, with_index: bool = False) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` and load it now, so that a missing dataset fails before training."""
    datamodule = instantiate(cfg.data, include_unlabeled=include_unlabeled, with_index=with_index)
    try:
        datamodule.setup("fit")
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data: {error}") from error
    return datamodule


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    max_epochs: Optional[int] = None,
    distillation: bool = True,
    extra_callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """Instantiate the trainer, callbacks and loggers, writing into ``output_dir``.

    Without ``distillation`` (stages teacher and student), the callbacks that need a
    ``DistillationModule`` are left out.
    """
    cfg = cfg.copy()
    cfg.paths.output_dir = str(output_dir)
    callbacks = [*extra_callbacks, *(instantiate(c) for c in (cfg.get("callbacks") or {}).values())]
    if not distillation:
        callbacks = [c for c in callbacks if not isinstance(c, DISTILLATION_CALLBACKS)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    overrides: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False, "plugins": [AtomicCheckpointIO()]}
    if cfg.trainer.get("enable_progress_bar") is None:
        overrides["enable_progress_bar"] = sys.stderr.isatty()  # no walls of bar updates in logs
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    return instantiate(cfg.trainer, **overrides)


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


def _fit_and_test(
    cfg: DictConfig,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    resume_from: Optional[str] = None,
) -> tuple[float, dict[str, float]]:
    """Fit (from ``resume_from`` if given), then test the best checkpoint (or the final weights).

    Returns:
        The monitored metric (its best value when checkpoints are kept) and the test metrics.
    """
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
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
    return float(monitored), {k: float(v) for k, v in tested.items()}


def _train_classifier(
    cfg: DictConfig,
    role: str,
    network: nn.Module,
    datamodule: L.LightningDataModule,
    output_dir: Path,
    resume_from: Optional[str] = None,
) -> float:
    """Stages ``teacher`` and ``student``: plain cross-entropy training of one network."""
    module = ClassifierModule(network, optimizer=instantiate(cfg.optimizer), num_classes=cfg.dataset.num_classes)
    max_epochs = cfg.teacher.max_epochs if role == "teacher" else None
    trainer = build_trainer(cfg, output_dir, max_epochs, distillation=False)
    monitored, tested = _fit_and_test(cfg, module, datamodule, trainer, resume_from)
    if not trainer.is_global_zero:  # one process writes the results of a distributed run
        return monitored
    weights = save_torch(output_dir / f"{role}.pt", network.state_dict())
    log.info("%s saved to %s (test/acc %.4f)", role, weights, tested.get("test/acc", float("nan")))
    _write_results(
        cfg, role, output_dir, monitored, tested, params={role: count_parameters(network)}, weights=weights.name
    )
    return monitored


# --- the teacher of a distillation run ------------------------------------------------------


def teacher_recipe_hash(cfg: DictConfig) -> str:
    """A hash of everything that determines a teacher trained by ``stage=distill``."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("include_unlabeled", None)
    recipe = {
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "data": data,
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "monitor": cfg.monitor,
    }
    recipe["teacher"].pop("checkpoint", None)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def obtain_teacher(cfg: DictConfig, output_dir: Path) -> tuple[nn.Module, str]:
    """The teacher from ``teacher.checkpoint``, from the cache, or trained now and cached.

    Returns:
        The teacher network and the path of the weights it was loaded from or saved to.
    """
    teacher = build_network(cfg.teacher, "teacher")
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint).expanduser().absolute()
        try:
            load_teacher_weights(teacher, path)
        except TeacherCheckpointError as error:
            raise ConfigError(f"teacher.checkpoint: {error}") from error
        log.info("teacher loaded from %s", path)
        return teacher, str(path)
    cache = Path(cfg.paths.teacher_cache).absolute()
    path = cache / f"{cfg.dataset.name}-{type(teacher).__name__.lower()}-{teacher_recipe_hash(cfg)}.pt"
    if path.is_file():
        load_teacher_weights(teacher, path)
        log.info("teacher reused from %s", path)
        return teacher, str(path)
    log.info("no teacher.checkpoint given: training the teacher first (cached at %s)", path)
    L.seed_everything(cfg.teacher.seed, workers=True, verbose=False)
    teacher = build_network(cfg.teacher, "teacher")
    _train_classifier(cfg, "teacher", teacher, build_datamodule(cfg, include_unlabeled=False), output_dir / "teacher")
    if rank_zero_only.rank == 0:
        save_json(path.with_suffix(".json"), {"config": OmegaConf.to_container(cfg, resolve=False)})
        save_torch(path, teacher.state_dict())
    return teacher, str(path)


# --- distillation ---------------------------------------------------------------------------


def _distill(cfg: DictConfig, output_dir: Path) -> float:
    # Everything that can fail on a bad value is built before the teacher may need training.
    resume_from = resume_checkpoint(cfg, output_dir)
    loss = instantiate({k: v for k, v in cfg.distill.items() if k not in CACHE_SETTINGS})
    cache = cfg.distill.get("cache_teacher", False)
    datamodule = build_datamodule(
        cfg, include_unlabeled=bool(cfg.data.get("include_unlabeled", False)), with_index=cache
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    student = build_network(cfg.student, "student")
    teacher, teacher_source = obtain_teacher(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # training a teacher reseeded the RNG
    module = DistillationModule(
        student, teacher, loss=loss, optimizer=instantiate(cfg.optimizer), num_classes=cfg.dataset.num_classes
    )
    trainer = build_trainer(cfg, output_dir, extra_callbacks=[_cache_callback(cfg, output_dir)] if cache else [])
    monitored, tested = _fit_and_test(cfg, module, datamodule, trainer, resume_from)
    if not trainer.is_global_zero:  # one process writes the results of a distributed run
        return monitored
    weights = save_torch(output_dir / "student.pt", student.state_dict())
    log.info("distilled student saved to %s (test/acc %.4f)", weights, tested.get("test/acc", float("nan")))

    x, _ = next(iter(datamodule.test_dataloader()))
    _write_results(
        cfg,
        "distill",
        output_dir,
        monitored,
        tested,
        params={"student": count_parameters(student), "teacher": count_parameters(teacher)},
        weights=weights.name,
        teacher={"source": teacher_source, "test/acc": tested["test/teacher_acc"]},
        latency_ms={"student": forward_latency_ms(student, x), "teacher": forward_latency_ms(teacher, x)},
    )
    return monitored


def _cache_callback(cfg: DictConfig, output_dir: Path) -> CacheTeacherOutputs:
    """The teacher-output cache of ``distill.cache_teacher=true``."""
    directory = cfg.distill.get("cache_dir") or output_dir / "teacher_cache"
    try:
        return CacheTeacherOutputs(
            dirpath=Path(directory).absolute(), dtype=cfg.distill.cache_dtype, top_k=cfg.distill.get("cache_top_k")
        )
    except ValueError as error:
        raise ConfigError(f"distill: {error}") from error


# --- results --------------------------------------------------------------------------------


def _write_results(cfg: DictConfig, stage: str, output_dir: Path, monitored: float, tested: dict, **extra: Any) -> None:
    """Write ``metrics.json``: the settings of the run and its final metrics, machine-readable."""
    results = {
        "stage": stage,
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "labeled_size": cfg.data.get("labeled_size"),
        "include_unlabeled": bool(cfg.data.get("include_unlabeled", False)) and stage == "distill",
        "monitor": {"name": cfg.monitor, "value": monitored},
        "test": tested,
        **extra,
    }
    if stage == "distill":
        results["distill"] = {k: cfg.distill[k] for k in ("temperature", "alpha", "objective")}
        results["distill"]["cache_teacher"] = bool(cfg.distill.get("cache_teacher", False))
    save_json(output_dir / METRICS_FILE, results)
