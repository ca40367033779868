"""Side-by-side measurements of networks: parameter counts and forward latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn

__all__ = ["count_parameters", "forward_latency_ms"]


def count_parameters(network: nn.Module) -> int:
    """Number of parameters of ``network``."""
    return sum(p.numel() for p in network.parameters())


@torch.inference_mode()
def forward_latency_ms(network: nn.Module, x: Tensor, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time in milliseconds of one eval-mode forward pass on ``x``."""
    was_training = network.training
    network.eval()
    for _ in range(warmup):
        network(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        network(x)
        times.append(time.perf_counter() - start)
    network.train(was_training)
    return 1000 * statistics.median(times)
