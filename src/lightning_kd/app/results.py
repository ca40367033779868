"""Where a kd-train run leaves its results for kd-report, and what they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_kd.files import save_json

__all__ = ["METRICS_FILE", "distill_settings", "write_results"]

METRICS_FILE = "metrics.json"  # settings and final metrics of one run, machine-readable


def write_results(cfg: DictConfig, stage: str, output_dir: Path, monitored: float, tested: dict, **extra: Any) -> None:
    """Write ``metrics.json``: the settings of the run and its final metrics, machine-readable.

    ``monitor`` holds the metric's name, its mode (``max`` or ``min``: which way is better)
    and its value, so that ``kd-report`` chooses and labels by it.
    """
    results = {
        "stage": stage,
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "labeled_size": cfg.data.get("labeled_size"),
        "include_unlabeled": bool(cfg.data.get("include_unlabeled", False)) and stage == "distill",
        "monitor": {"name": cfg.monitor, "mode": cfg.monitor_mode, "value": monitored},
        "test": tested,
        **extra,
    }
    save_json(output_dir / METRICS_FILE, results)


def distill_settings(cfg: DictConfig, loss: Any) -> dict[str, Any]:
    """What ``metrics.json`` records of a distillation: the loss's configured arguments, its
    ``objective`` as the loss itself names it (``kl``, ``mse``, ``dkd``), and where the teacher's
    outputs came from."""
    configured = OmegaConf.to_container(cfg.distill.loss, resolve=True)
    settings = {key: value for key, value in configured.items() if not key.startswith("_")}
    settings["objective"] = getattr(loss, "objective", settings.get("objective"))
    settings["teacher_outputs"] = "cached" if cfg.distill.get("teacher_outputs") else "live"
    return settings
