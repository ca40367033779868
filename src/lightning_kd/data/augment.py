"""Random augmentation of image batches, applied on the device after the batch is transferred."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RandomCropFlip"]


class RandomCropFlip:
    """Random crop after zero padding, and random horizontal flip, of a whole batch ``[B, C, H, W]``.

    The usual augmentation of CIFAR and Fashion-MNIST classifiers (``RandomCrop(size, padding)``
    and ``RandomHorizontalFlip``), done per sample on the batch at once, on whatever device the
    batch is, with torch's global random generator (so ``seed_everything`` makes it repeatable).
    Pass it as ``augment=`` to a :class:`~lightning_kd.data.TensorDataModule`, which applies it to
    training batches only.

    Args:
        padding: Pixels of zero padding on each side; each crop is shifted by up to ``padding``
            pixels in each direction (0: no crop).
        flip: Whether to flip each image left-right with probability 1/2.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> RandomCropFlip(padding=1)(x).shape
        torch.Size([1, 1, 4, 4])
        >>> torch.equal(RandomCropFlip(padding=0, flip=False)(x), x)
        True
    """

    def __init__(self, padding: int = 2, flip: bool = True):
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer (pixels), got {padding!r}")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be true or false, got {flip!r}")
        self.padding = padding
        self.flip = flip

    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"RandomCropFlip expects images [B, C, H, W], got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        out = images
        if self.padding:
            pad = self.padding
            padded = F.pad(images, (pad, pad, pad, pad))
            shift_y = torch.randint(0, 2 * pad + 1, (batch, 1, 1), device=images.device)
            shift_x = torch.randint(0, 2 * pad + 1, (batch, 1, 1), device=images.device)
            rows = shift_y + torch.arange(height, device=images.device).view(1, -1, 1)
            cols = shift_x + torch.arange(width, device=images.device).view(1, 1, -1)
            samples = torch.arange(batch, device=images.device).view(-1, 1, 1)
            out = padded.permute(0, 2, 3, 1)[samples, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flipped = torch.rand(batch, device=images.device) < 0.5
            out = torch.where(flipped.view(-1, 1, 1, 1), out.flip(-1), out)
        return out.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, flip={self.flip})"
