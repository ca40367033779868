"""Shared fixtures and tiny models for the test suite."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class BatchNormDropoutNet(nn.Module):
    """A teacher with BatchNorm and Dropout: the layers whose behaviour depends on train/eval."""

    def __init__(self, in_features: int = 8, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def toy_loaders() -> tuple[DataLoader, DataLoader]:
    """A learnable 3-class problem on 8 features: (train, val) loaders."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    return train, val


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without progress bars, summaries or default loggers, for tests."""
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return L.Trainer(**options)
