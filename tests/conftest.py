"""Fixtures shared by the test suite."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset


@pytest.fixture
def toy_loaders() -> tuple[DataLoader, DataLoader]:
    """A learnable 3-class problem on 8 features: (train, val) loaders."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    return train, val
