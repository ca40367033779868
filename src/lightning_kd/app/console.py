"""A readable console: the expected warnings and banners of Lightning, filtered precisely."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_console"]


def quiet_console() -> None:
    """Silence what a kd-train user cannot act on; leave every other warning visible."""
    # In-memory tensor datasets gain nothing from worker processes.
    warnings.filterwarnings("ignore", message=r"The '\w+_dataloader' does not have many workers")
    # Lightning's own pytree helper calls an API that recent torch deprecates.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Digits has 20 batches per epoch; the default logging interval of 50 steps is larger.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # "GPU available: False", "TPU available", the logging and upload tips: banners, not news.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
