"""Side-by-side measurements of networks: parameter counts and forward latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from lightning_kd.batch import forward_logits, split_batch

__all__ = ["count_parameters", "example_inputs", "forward_latency_ms"]


def count_parameters(network: nn.Module) -> int:
    """Number of parameters of ``network``."""
    return sum(p.numel() for p in network.parameters())


def example_inputs(datamodule: Any) -> Any:
    """The network inputs of the first test batch: a tensor, or the keyword inputs of tokenized text."""
    return split_batch(next(iter(datamodule.test_dataloader()))).x


@torch.inference_mode()
def forward_latency_ms(network: nn.Module, x: Any, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in milliseconds of one eval-mode forward pass on ``x`` (keyword inputs when a mapping)."""
    was_training = network.training
    network.eval()
    for _ in range(warmup):
        forward_logits(network, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_logits(network, x)
        times.append(time.perf_counter() - start)
    network.train(was_training)
    return 1000 * statistics.median(times)
