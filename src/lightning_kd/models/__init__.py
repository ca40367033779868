"""Small reference networks used by the configs, examples and tests."""

from lightning_kd.models.cnn import CNN
from lightning_kd.models.mlp import MLP

__all__ = ["CNN", "MLP"]
