"""Where a kd-train run leaves its results for kd-report, and what they hold."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightning_kd.app.task import headline_metric
from lightning_kd.files import save_json

__all__ = ["METRICS_FILE", "distill_settings", "start_clock", "student_name", "write_results"]

METRICS_FILE = "metrics.json"  # settings and final metrics of one run, machine-readable

_job_started = time.monotonic()


def start_clock() -> None:
    """Start timing a job: ``metrics.json`` records the seconds from here (``seconds``)."""
    global _job_started
    _job_started = time.monotonic()


def write_results(cfg: DictConfig, stage: str, output_dir: Path, monitored: float, tested: dict, **extra: Any) -> None:
    """Write ``metrics.json``: the settings of the run and its final metrics, machine-readable.

    ``monitor`` holds the metric's name, its mode (``max`` or ``min``: which way is better)
    and its value, so that ``kd-report`` chooses and labels by it; ``score`` names the test
    metric the run is reported by (``test/acc``, or ``test/ppl`` for language models).
    """
    results = {
        "stage": stage,
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "labeled_size": cfg.data.get("labeled_size"),
        "include_unlabeled": bool(cfg.data.get("include_unlabeled", False)) and stage == "distill",
        "monitor": {"name": cfg.monitor, "mode": cfg.monitor_mode, "value": monitored},
        "score": dict(zip(("name", "mode"), headline_metric(cfg), strict=True)),
        "test": tested,
        "seconds": round(time.monotonic() - _job_started, 1),
        **extra,
    }
    if stage != "teacher":
        results["student_name"] = student_name(cfg)
    save_json(output_dir / METRICS_FILE, results)


def student_name(cfg: DictConfig) -> str:
    """The student's config name (``student=cnn_small``), or its class when composed otherwise."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("student")
        if choice:
            return str(choice)
    return str(cfg.student.get("_target_", "student")).rsplit(".", 1)[-1]


def distill_settings(cfg: DictConfig, loss: Any) -> dict[str, Any]:
    """What ``metrics.json`` records of a distillation: the loss's configured arguments, its
    ``objective`` as the loss itself names it (``kl``, ``mse``, ``dkd``), where the teacher's
    outputs came from (``live``, ``cached``, ``cached top-k``), and for language models how the
    training text was made (``sequence_level``, ``on_policy``: their settings, or ``None``)."""
    configured = OmegaConf.to_container(cfg.distill.loss, resolve=True)
    settings = {key: value for key, value in configured.items() if not key.startswith("_")}
    settings["objective"] = getattr(loss, "objective", settings.get("objective"))
    outputs = cfg.distill.get("teacher_outputs")
    settings["teacher_outputs"] = (
        "live" if not outputs else "cached" + (f" top-{outputs.top_k}" if outputs.get("top_k") else "")
    )
    if cfg.distill.get("loss_on"):  # language models: from logits or from hidden states
        settings["loss_on"] = cfg.distill.loss_on
    pairs = cfg.distill.get("feature_pairs")
    settings["feature_pairs"] = OmegaConf.to_container(pairs, resolve=True) if pairs else None
    for key in ("sequence_level", "on_policy"):
        node = cfg.distill.get(key)
        settings[key] = (
            None
            if not node
            else {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
        )
    return settings
