"""Where a kd-train run leaves its results for kd-report, and what they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_kd.files import save_json

__all__ = ["METRICS_FILE", "write_results"]

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
    if stage == "distill":
        loss = OmegaConf.to_container(cfg.distill.loss, resolve=True)
        results["distill"] = {key: value for key, value in loss.items() if not key.startswith("_")}
        if str(loss.get("_target_", "")).endswith("DKDLoss"):
            results["distill"]["objective"] = "dkd"
        results["distill"]["teacher_outputs"] = "cached" if cfg.distill.get("teacher_outputs") else "live"
    save_json(output_dir / METRICS_FILE, results)
