"""lightning-kd: knowledge distillation for PyTorch Lightning and Hydra.

The public names are imported on first use, so that ``import lightning_kd.losses`` or the
``kd-report`` command do not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Batch": "lightning_kd.batch",
    "split_batch": "lightning_kd.batch",
    "load_student": "lightning_kd.checkpoint",
    "ClassifierModule": "lightning_kd.classifier",
    "DistillationLoss": "lightning_kd.losses",
    "DistillationLossOutput": "lightning_kd.losses",
    "hard_target_loss": "lightning_kd.losses",
    "logit_matching_loss": "lightning_kd.losses",
    "soft_target_loss": "lightning_kd.losses",
    "DistillationModule": "lightning_kd.module",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lightning_kd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
