"""A small convolutional classifier for single- or few-channel images."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from lightning_kd.checks import check_positive_int

__all__ = ["CNN"]


class CNN(nn.Module):
    """``[Conv3x3 -> (BatchNorm) -> ReLU -> MaxPool2] * n -> AdaptivePool(4x4) -> MLP head``.

    The adaptive pooling makes the head independent of the image size (8x8 digits, 28x28
    Fashion-MNIST).

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        channels: Output channels of each convolution block.
        hidden: Width of the hidden layer of the head (0: a linear head).
        dropout: Dropout probability in the head (0 disables it).
        batch_norm: Whether to add BatchNorm after each convolution.

    Example:
        >>> import torch
        >>> CNN(1, 10, channels=(8, 16), hidden=32)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        if not channels:
            raise ValueError(f"channels must list at least one convolution width, got {channels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        blocks: list[nn.Module] = []
        width = in_channels
        for size in channels:
            blocks.append(nn.Conv2d(width, int(size), kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(int(size)))
            blocks += [nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            width = int(size)
        blocks += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        head: list[nn.Module] = []
        features = width * 16
        if hidden:
            head += [nn.Linear(features, hidden), nn.ReLU()]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            features = hidden
        head.append(nn.Linear(features, num_classes))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[B, num_classes]`` for images ``[B, C, H, W]``."""
        return self.head(self.features(x))
