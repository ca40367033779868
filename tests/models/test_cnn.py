from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_kd.models import CNN


@pytest.mark.parametrize("size", [8, 28])
def test_any_image_size_gives_logits(size):
    model = CNN(1, 10, channels=(8, 16), hidden=32, dropout=0.1)
    assert model(torch.zeros(3, 1, size, size)).shape == (3, 10)


def test_layers_follow_the_arguments():
    model = CNN(3, 5, channels=(4, 8, 16), hidden=0, batch_norm=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16] and convs[0].in_channels == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert [m for m in model.head if isinstance(m, nn.Linear)][0].in_features == 16 * 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0}, "in_channels must be a positive integer, got 0"),
        ({"channels": ()}, r"channels must list at least one convolution width, got \(\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNN(**{"in_channels": 1, "num_classes": 10, **kwargs})
