"""GPT-2-style causal language models built from a config (Hugging Face ``transformers``, unchanged)."""

from __future__ import annotations

from typing import Any

from lightning_kd.checks import check_positive_int

__all__ = ["gpt2_lm"]


def gpt2_lm(
    vocab_size: int,
    n_positions: int,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    dropout: float = 0.0,
    tie_word_embeddings: bool = True,
) -> Any:
    """A randomly initialised ``transformers.GPT2LMHeadModel`` of the given size.

    The model is Hugging Face's own class (``generate``, ``base_model``, ``get_output_embeddings``
    and ``save_pretrained`` all work), built offline from a ``GPT2Config``: nothing is downloaded.

    Args:
        vocab_size: Size of the tokenizer's vocabulary.
        n_positions: The longest sequence the model sees (the data's ``block_size``, or more).
        n_layer: Transformer blocks.
        n_embd: Width of the residual stream.
        n_head: Attention heads (must divide ``n_embd``).
        dropout: Dropout on embeddings, attention and residuals.
        tie_word_embeddings: Share the input embedding and the output head, as GPT-2 does.

    Example:
        >>> import torch
        >>> lm = gpt2_lm(vocab_size=50, n_positions=16, n_layer=1, n_embd=32, n_head=2)
        >>> lm(input_ids=torch.zeros(2, 8, dtype=torch.long)).logits.shape
        torch.Size([2, 8, 50])
    """
    for name, value in (("vocab_size", vocab_size), ("n_positions", n_positions), ("n_layer", n_layer)):
        check_positive_int(name, value)
    check_positive_int("n_head", n_head)
    if n_embd % n_head:
        raise ValueError(f"n_embd must be a multiple of n_head, got n_embd={n_embd} and n_head={n_head}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as error:  # the [text] extra
        raise ImportError("gpt2_lm needs transformers: pip install 'lightning-kd[text]'") from error
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)
