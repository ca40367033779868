"""Small reference networks used by the configs, examples and tests."""

from lightning_kd.models.cnn import CNN
from lightning_kd.models.gpt import gpt2_lm
from lightning_kd.models.mlp import MLP
from lightning_kd.models.text_classifier import (
    EncoderClassifier,
    minilm_classifier,
    minilm_directory,
    small_encoder_classifier,
)

__all__ = [
    "CNN",
    "MLP",
    "EncoderClassifier",
    "gpt2_lm",
    "minilm_classifier",
    "minilm_directory",
    "small_encoder_classifier",
]
