"""train_bpe_tokenizer: trained once per corpus and size, cached under its identity, lossless, deterministic."""

from __future__ import annotations

import pytest

import lightning_kd.text.tokenizer as tokenizer_module
from lightning_kd.text.tokenizer import END_OF_TEXT, bpe_tokenizer_identity, train_bpe_tokenizer

TEXTS = [
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 20,
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 20,
]


def test_a_second_call_loads_the_cached_file_instead_of_training(tmp_path, monkeypatch, caplog):
    first = train_bpe_tokenizer(TEXTS, 300, tmp_path)
    (path,) = tmp_path.iterdir()  # one file, no temporary left behind
    assert path.name == f"{bpe_tokenizer_identity(TEXTS, 300)}.json" and path.name.startswith("bpe-300-")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cached file")

    monkeypatch.setattr(tokenizer_module, "_build", no_training)
    mtime = path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="lightning_kd.text.tokenizer"):
        second = train_bpe_tokenizer(TEXTS, 300, tmp_path)
    assert "loaded from" in caplog.text and path.stat().st_mtime_ns == mtime
    assert second.to_str() == first.to_str()


def test_another_text_or_size_gives_another_file(tmp_path):
    train_bpe_tokenizer(TEXTS, 300, tmp_path)
    train_bpe_tokenizer(TEXTS[:1], 300, tmp_path)
    train_bpe_tokenizer(TEXTS, 320, tmp_path)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 3 and sum(name.startswith("bpe-320-") for name in names) == 1
    # The texts are hashed with their boundaries: the same characters cut differently are another corpus.
    assert bpe_tokenizer_identity(["ab", "c"], 300) != bpe_tokenizer_identity(["a", "bc"], 300)


def test_decoding_gives_back_the_text_and_ids_stay_below_vocab_size(tmp_path):
    tokenizer = train_bpe_tokenizer(TEXTS, 300, tmp_path)
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n\tDéjà vu — 🙂 {unseen} <|endoftext|>  spaces"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.token_to_id(END_OF_TEXT) == 0 and ids[-2:] != [0] and 0 in ids  # the separator is one token
    assert max(ids) < 300 and tokenizer.get_vocab_size() <= 300
    assert len(tokenizer.encode(TEXTS[0]).ids) < 0.6 * len(TEXTS[0])  # it learned merges: fewer tokens than bytes


def test_training_is_deterministic(tmp_path):
    one = train_bpe_tokenizer(TEXTS, 300, tmp_path / "one")
    two = train_bpe_tokenizer(TEXTS, 300, tmp_path / "two")
    assert one.to_str() == two.to_str()


@pytest.mark.parametrize(
    ("texts", "vocab_size", "error", "match"),
    [
        (TEXTS, 256, ValueError, "vocab_size must be at least 257 .*, got 256"),
        (TEXTS, 0, ValueError, "vocab_size must be a positive integer, got 0"),
        ("one string", 300, TypeError, "texts must be a sequence of strings, got str"),
        (["", ""], 300, ValueError, "texts must hold some text"),
    ],
)
def test_bad_arguments(tmp_path, texts, vocab_size, error, match):
    with pytest.raises(error, match=match):
        train_bpe_tokenizer(texts, vocab_size, tmp_path)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
