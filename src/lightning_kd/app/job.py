"""The three stages of ``kd-train``: teacher, student (the scratch baseline) and distill."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_kd.app.building import (
    build_datamodule,
    build_lr_scheduler,
    build_network,
    build_trainer,
    fit_and_test,
    resume_checkpoint,
    teacher_config,
    train_network,
)
from lightning_kd.app.errors import ConfigError
from lightning_kd.app.measure import count_parameters, example_inputs, forward_latency_ms
from lightning_kd.app.results import distill_settings, start_clock, write_results
from lightning_kd.app.samples import text_samples
from lightning_kd.app.task import headline_metric, is_language_model
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
    start_clock()
    validate_config(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    _refuse_relaunching_strategy_in_a_sweep(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.stage == "distill":
        return _distill(cfg, output_dir)
    if cfg.stage == "teacher":
        cfg = teacher_config(cfg)  # teacher.train's epochs, steps and augmentation
    resume_from = resume_checkpoint(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    key = "teacher.net" if cfg.stage == "teacher" else "student"
    network = build_network(OmegaConf.select(cfg, key), key)
    datamodule = build_datamodule(cfg, include_unlabeled=False)
    return train_network(cfg, cfg.stage, network, datamodule, output_dir, resume_from)


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
    sequences = [instantiate(cfg.distill.sequence_level)] if cfg.distill.get("sequence_level") else []
    datamodule = build_datamodule(
        cfg, include_unlabeled=bool(cfg.data.get("include_unlabeled", False)), with_index=bool(teacher_outputs)
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    student = build_network(cfg.student, "student")
    teacher, teacher_source = obtain_teacher(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # training a teacher reseeded the RNG
    module = _distillation_module(cfg, student, teacher, loss)
    trainer = build_trainer(cfg, output_dir, extra_callbacks=[*teacher_outputs, *sequences])
    monitored, tested, validated = fit_and_test(cfg, module, datamodule, trainer, resume_from)
    if not trainer.is_global_zero:  # one process writes the results of a distributed run
        return monitored
    weights = save_torch(output_dir / "student.pt", student.state_dict())
    metric, _ = headline_metric(cfg)
    log.info("distilled student saved to %s (%s %.4f)", weights, metric, tested.get(metric, float("nan")))

    inputs = example_inputs(datamodule)
    networks = {"teacher": teacher, "student": student}
    extra = {"samples": text_samples(cfg, datamodule, networks)} if is_language_model(cfg) else {}
    write_results(
        cfg,
        "distill",
        output_dir,
        monitored,
        tested,
        params={"student": count_parameters(student), "teacher": count_parameters(teacher)},
        weights=weights.name,
        distill=distill_settings(cfg, loss),
        teacher=_teacher_record(cfg, teacher_source, tested, validated),
        latency_ms={"student": forward_latency_ms(student, inputs), "teacher": forward_latency_ms(teacher, inputs)},
        **extra,
    )
    return monitored


def _teacher_record(
    cfg: DictConfig, source: str, tested: dict[str, float], validated: dict[str, float]
) -> dict[str, Any]:
    """The teacher's test score and, when the module logged it, its value of the monitored metric."""
    metric, _ = headline_metric(cfg)
    record: dict[str, Any] = {"source": source, metric: tested[metric.replace("test/", "test/teacher_", 1)]}
    teacher_monitor = cfg.monitor.replace("val/", "val/teacher_", 1)
    if teacher_monitor in validated:  # the teacher is frozen: the same at every validation
        record["monitor"] = validated[teacher_monitor]
    return record


def _distillation_module(cfg: DictConfig, student: nn.Module, teacher: nn.Module, loss: Any) -> L.LightningModule:
    factories = {"optimizer": instantiate(cfg.optimizer), "lr_scheduler": build_lr_scheduler(cfg)}
    if not is_language_model(cfg):
        pairs = cfg.distill.get("feature_pairs")
        return DistillationModule(
            student,
            teacher,
            loss=loss,
            num_classes=cfg.dataset.num_classes,
            feature_pairs=OmegaConf.to_container(pairs, resolve=True) if pairs else None,
            **factories,
        )
    from lightning_kd.text import CausalLMDistillationModule

    on_policy = instantiate(cfg.distill.on_policy) if cfg.distill.get("on_policy") else None
    return CausalLMDistillationModule(
        student, teacher, loss=loss, loss_on=cfg.distill.get("loss_on") or "logits", on_policy=on_policy, **factories
    )
