from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_kd.models import MLP


def test_shapes_and_layers():
    model = MLP(64, 10, hidden=(32, 16), dropout=0.1, batch_norm=True)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    kinds = [type(m) for m in model.net]
    assert kinds.count(nn.Linear) == 3 and kinds.count(nn.BatchNorm1d) == 2 and kinds.count(nn.Dropout) == 2


def test_linear_model_without_hidden_layers():
    assert sum(p.numel() for p in MLP(4, 2, hidden=()).parameters()) == 4 * 2 + 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0}, "in_features must be a positive integer, got 0"),
        ({"num_classes": 2.5}, "num_classes must be a positive integer, got 2.5"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"in_features": 4, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP(**arguments)
