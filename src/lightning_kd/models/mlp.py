"""A multilayer perceptron classifier."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from lightning_kd.checks import check_positive_int

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected classifier: ``[Linear -> (BatchNorm) -> ReLU -> (Dropout)] * n -> Linear``.

    Inputs of any shape ``[B, ...]`` are flattened, so images work as they are.

    Args:
        in_features: Size of one flattened input.
        num_classes: Number of output logits.
        hidden: Width of each hidden layer; empty for a linear model.
        dropout: Dropout probability after each hidden layer (0 disables it).
        batch_norm: Whether to add BatchNorm after each hidden linear layer.

    Example:
        >>> import torch
        >>> MLP(64, 10, hidden=(30, 30))(torch.zeros(5, 8, 8)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_classes", num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, int(size)))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(size)))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[B, num_classes]``."""
        return self.net(x)
