"""The three stages of ``kd-train``: teacher, student (the scratch baseline) and distill."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_kd.app.building import (
    build_datamodule,
    build_lr_scheduler,
    build_network,
    build_trainer,
    fit_and_test,
    resume_checkpoint,
    train_classifier,
)
from lightning_kd.app.errors import ConfigError
from lightning_kd.app.measure import count_parameters, forward_latency_ms
from lightning_kd.app.results import distill_settings, write_results
from lightning_kd.app.trained_teachers import obtain_teacher
from lightning_kd.app.validate import STAGES, validate_config
from lightning_kd.files import save_torch
from lightning_kd.module import DistillationModule

__all__ = ["STAGES", "run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Run the stage ``cfg.stage`` and return the monitored metric (for sweepers).

    Each run writes ``metrics.json`` into ``cfg.paths.output_dir``, and the trained network:
    ``teacher.pt`` or ``student.pt`` (a plain state_dict).
    """
    validate_config(cfg)
    _refuse_relaunching_strategy_in_a_sweep(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.stage == "distill":
        return _distill(cfg, output_dir)
    resume_from = resume_checkpoint(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    key = "teacher.net" if cfg.stage == "teacher" else "student"
    network = build_network(OmegaConf.select(cfg, key), key)
    datamodule = build_datamodule(cfg, include_unlabeled=False)
    return train_classifier(cfg, cfg.stage, network, datamodule, output_dir, resume_from)


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


def _distill(cfg: DictConfig, output_dir: Path) -> float:
    # Everything that can fail on a bad value is built before the teacher may need training.
    resume_from = resume_checkpoint(cfg, output_dir)
    loss = instantiate(cfg.distill.loss)
    teacher_outputs = [instantiate(cfg.distill.teacher_outputs)] if cfg.distill.get("teacher_outputs") else []
    datamodule = build_datamodule(
        cfg, include_unlabeled=bool(cfg.data.get("include_unlabeled", False)), with_index=bool(teacher_outputs)
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    student = build_network(cfg.student, "student")
    teacher, teacher_source = obtain_teacher(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # training a teacher reseeded the RNG
    module = DistillationModule(
        student,
        teacher,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=build_lr_scheduler(cfg),
        num_classes=cfg.dataset.num_classes,
    )
    trainer = build_trainer(cfg, output_dir, extra_callbacks=teacher_outputs)
    monitored, tested = fit_and_test(cfg, module, datamodule, trainer, resume_from)
    if not trainer.is_global_zero:  # one process writes the results of a distributed run
        return monitored
    weights = save_torch(output_dir / "student.pt", student.state_dict())
    log.info("distilled student saved to %s (test/acc %.4f)", weights, tested.get("test/acc", float("nan")))

    x, _ = next(iter(datamodule.test_dataloader()))
    write_results(
        cfg,
        "distill",
        output_dir,
        monitored,
        tested,
        params={"student": count_parameters(student), "teacher": count_parameters(teacher)},
        weights=weights.name,
        distill=distill_settings(cfg, loss),
        teacher={"source": teacher_source, "test/acc": tested["test/teacher_acc"]},
        latency_ms={"student": forward_latency_ms(student, x), "teacher": forward_latency_ms(teacher, x)},
    )
    return monitored
