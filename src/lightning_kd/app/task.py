"""What kind of task a ``kd-train`` config describes: classification, or a causal language model."""

from __future__ import annotations

from omegaconf import DictConfig

__all__ = ["TASKS", "headline_metric", "is_language_model"]

TASKS = ("classification", "language_model")


def is_language_model(cfg: DictConfig) -> bool:
    """Whether the data is text for a causal language model (``dataset.task: language_model``)."""
    return cfg.dataset.get("task", "classification") == "language_model"


def headline_metric(cfg: DictConfig) -> tuple[str, str]:
    """The test metric a run is reported by, and which way is better: accuracy, or perplexity for language models."""
    return ("test/ppl", "min") if is_language_model(cfg) else ("test/acc", "max")
