"""A byte-level BPE tokenizer trained on a corpus once, then loaded from a file named by its recipe."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from lightning_kd.checks import check_positive_int
from lightning_kd.files import atomic_write

__all__ = [
    "END_OF_TEXT",
    "MIN_BPE_VOCAB_SIZE",
    "bpe_tokenizer_identity",
    "check_bpe_vocab_size",
    "train_bpe_tokenizer",
]

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"  # the document separator, GPT-2's name for it
MIN_BPE_VOCAB_SIZE = 257  # the 256 byte symbols and END_OF_TEXT: below that the vocabulary outgrows vocab_size
MIN_FREQUENCY = 2  # a pair seen once is noise, not a unit worth a token
# Part of every identity: changing how the tokenizer is built must change its file name, so an old
# cached file is never taken for a new recipe. Bump it whenever _build changes.
RECIPE = "byte-level-bpe-v1"


def _settings(vocab_size: int) -> dict[str, object]:
    return {
        "recipe": RECIPE,
        "vocab_size": vocab_size,
        "min_frequency": MIN_FREQUENCY,
        "special_tokens": [END_OF_TEXT],
        "add_prefix_space": False,
    }


def bpe_tokenizer_identity(texts: Sequence[str], vocab_size: int) -> str:
    """The name of the tokenizer that :func:`train_bpe_tokenizer` builds: its cache file's stem.

    ``bpe-<vocab_size>-<hash>``, where the hash (16 hex digits of SHA-256) covers the texts and
    every setting, so models and caches can record which tokenizer made their token ids.

    Example:
        >>> bpe_tokenizer_identity(["to be or not to be"], 300)[:8], len(bpe_tokenizer_identity(["x"], 300))
        ('bpe-300-', 24)
    """
    _check(texts, vocab_size)
    digest = hashlib.sha256(json.dumps(_settings(vocab_size), sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        # The length first, so that ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return f"bpe-{vocab_size}-{digest.hexdigest()[:16]}"


def check_bpe_vocab_size(vocab_size: int) -> None:
    """Raise a ``ValueError`` unless ``vocab_size`` is an integer of at least 257 (256 bytes and ``<|endoftext|>``)."""
    check_positive_int("vocab_size", vocab_size)
    if vocab_size < MIN_BPE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_BPE_VOCAB_SIZE} (the 256 bytes and {END_OF_TEXT}), got {vocab_size}"
        )


def _check(texts: Sequence[str], vocab_size: int) -> None:
    check_bpe_vocab_size(vocab_size)
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    if not any(texts):
        raise ValueError("texts must hold some text to train the tokenizer on, got none")


def _build(texts: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    settings = _settings(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=settings["add_prefix_space"])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=settings["min_frequency"],
        special_tokens=settings["special_tokens"],
        # All 256 bytes from the start: any text encodes, with no unknown token. The trainer sorts
        # the alphabet and breaks count ties by token id, so the result does not depend on the
        # order of its threads: the same texts give the same file.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, cache_dir: Union[str, os.PathLike]):
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts``, cached in ``cache_dir``.

    The file is ``cache_dir/<identity>.json`` (see :func:`bpe_tokenizer_identity`), written
    atomically; a later call with the same texts and vocabulary size loads it instead of training.
    Token 0 is ``<|endoftext|>``, the document separator; no token is added when encoding, and
    decoding gives back the exact text (the tokenizer works on bytes).

    Args:
        texts: The training corpus, e.g. one string per document.
        vocab_size: Vocabulary size including ``<|endoftext|>``, at least 257. A small corpus may
            yield fewer tokens (no pair left to merge), never more.
        cache_dir: Folder of the tokenizer files.

    Returns:
        A ``tokenizers.Tokenizer``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     tokenizer = train_bpe_tokenizer(["to be or not to be"] * 4, 300, folder)
        >>> ids = tokenizer.encode("to be, or not").ids
        >>> tokenizer.decode(ids), tokenizer.token_to_id("<|endoftext|>")
        ('to be, or not', 0)
    """
    from tokenizers import Tokenizer

    path = Path(cache_dir) / f"{bpe_tokenizer_identity(texts, vocab_size)}.json"
    if path.is_file():
        log.info("BPE tokenizer loaded from %s", path)
        return Tokenizer.from_file(str(path))
    start = time.perf_counter()
    tokenizer = _build(texts, vocab_size)
    atomic_write(path, lambda tmp: tokenizer.save(str(tmp)))
    log.info("BPE tokenizer trained in %.1f s, saved to %s", time.perf_counter() - start, path)
    return tokenizer
