"""``TeacherSequences``: sequence-level distillation, training the student on the teacher's own text."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from lightning_kd.checks import check_positive_int
from lightning_kd.data.indexed import IndexedDataset
from lightning_kd.data.token_blocks import TokenBlocks
from lightning_kd.files import save_json, save_torch
from lightning_kd.fingerprint import module_fingerprint
from lightning_kd.text.module import CausalLMDistillationModule
from lightning_kd.text.sampling import check_sampling, model_device
from lightning_kd.text.sequence_level import teacher_continuations

__all__ = ["TeacherSequences"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # part of the fingerprint: a change of the stored layout makes new files


class TeacherSequences(L.Callback):
    """Sequence-level distillation (Kim & Rush 2016): replace the training text by the teacher's.

    At ``setup`` of ``fit`` the teacher continues the first ``prompt_length`` tokens of every
    training sequence by ``max_new_tokens`` tokens (greedy by default: the teacher's approximate
    mode; see :func:`~lightning_kd.text.teacher_continuations`), and the datamodule's
    ``train_set`` (a :class:`~lightning_kd.data.TokenBlocks`, or an
    :class:`~lightning_kd.data.IndexedDataset` of one) is replaced by those sequences for the
    fit, with labels ``-100`` on the prompts. The module then trains with its usual loss:
    ``alpha=0`` is pure sequence-level KD (cross-entropy on the teacher's tokens), ``alpha > 0``
    adds the token-level term (Kim & Rush's word-level + sequence-level KD). The original
    ``train_set`` is put back at the end of the fit.

    The sequences are stored in ``<cache_dir>/<fingerprint>.pt``, beside a ``.json`` with the
    settings, the teacher's fingerprint, the number of sequences and the date. The fingerprint
    covers the teacher (its ``teacher_fingerprint()``), the training ``input_ids`` and every setting,
    so a later fit with the same ones reuses the file and any change writes a new one. Rank 0
    generates and writes (atomically) while the other ranks wait at a barrier, then every rank
    loads the file: ``cache_dir`` must be on a filesystem all ranks see.

    Args:
        prompt_length: Tokens of each training sequence kept as the prompt, ``>= 1``.
        max_new_tokens: Tokens the teacher writes after each prompt, ``>= 1``.
        greedy: The teacher's most likely token at each step; ``False`` samples.
        temperature: Sampling temperature when ``greedy=False``.
        top_k: Sample among the ``top_k`` most likely tokens when ``greedy=False``.
        seed: Seed of the draws when ``greedy=False``.
        cache_dir: Folder of the stored sequences.
        batch_size: Sequences generated at a time.
        max_sequences: Continue only this many training sequences, a random subset fixed by
            ``seed`` (``None``: all of them). A short run that sees a fraction of the training
            set need not pay for generating the rest.

    Example:
        >>> from lightning_kd.callbacks import TeacherSequences
        >>> TeacherSequences(prompt_length=16, max_new_tokens=48).settings()["greedy"]
        True
    """

    def __init__(
        self,
        prompt_length: int,
        max_new_tokens: int,
        greedy: bool = True,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        seed: int = 0,
        cache_dir: Union[str, Path] = "outputs/teacher_sequences",
        batch_size: int = 64,
        max_sequences: Optional[int] = None,
    ):
        check_positive_int("prompt_length", prompt_length)
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_sequences", max_sequences, allow_none=True)
        self.max_sequences = max_sequences
        check_sampling(max_new_tokens, temperature, top_k)
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.greedy = bool(greedy)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.path: Optional[Path] = None  # the file of this fit's sequences
        self.generated: Optional[bool] = None  # whether this fit generated them (False: reused)
        self.sequences: Optional[TokenBlocks] = None
        self._replaced: Optional[tuple[Any, Any]] = None  # (datamodule, its own train_set), put back at teardown

    def settings(self) -> dict[str, Any]:
        """Everything that decides the sequences besides the teacher and the prompts."""
        return {
            "prompt_length": self.prompt_length,
            "max_new_tokens": self.max_new_tokens,
            "greedy": self.greedy,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "seed": self.seed,
            "batch_size": self.batch_size,  # the draws, and the rounding of batched matmuls, depend on it
            "max_sequences": self.max_sequences,
        }

    def fingerprint(self, teacher_fingerprint: str, input_ids: Tensor) -> str:
        """SHA-256 of the teacher's fingerprint, the training ``input_ids`` and :meth:`settings` (those
        that matter: greedy decoding ignores ``temperature``, ``top_k`` and ``seed``)."""
        settings = self.settings()
        if self.greedy:  # argmax decoding: the sampling settings change nothing, so a new seed reuses the file
            for key in ("temperature", "top_k") + (("seed",) if self.max_sequences is None else ()):
                del settings[key]
        digest = hashlib.sha256()
        header = {"format": FORMAT_VERSION, "teacher": teacher_fingerprint, "settings": settings}
        digest.update(json.dumps(header, sort_keys=True).encode())
        ids = input_ids.detach().cpu().contiguous()
        digest.update(f"|{tuple(ids.shape)}|{ids.dtype}|".encode())
        digest.update(ids.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(self).__name__
        if not isinstance(pl_module, CausalLMDistillationModule):
            raise TypeError(f"{name} needs a CausalLMDistillationModule, got {type(pl_module).__name__}")
        datamodule = trainer.datamodule
        original = getattr(datamodule, "train_set", None)
        blocks = original.dataset if isinstance(original, IndexedDataset) else original
        if not isinstance(blocks, TokenBlocks):
            raise TypeError(
                f"{name} needs a datamodule whose train_set is a TokenBlocks (or an IndexedDataset of one), got "
                + ("no datamodule (pass datamodule= to fit)" if datamodule is None else type(original).__name__)
            )
        if blocks.input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"prompt_length={self.prompt_length} is longer than the training sequences "
                f"({blocks.input_ids.shape[1]} tokens)"
            )
        teacher_fingerprint = _current_teacher_fingerprint(trainer, pl_module)
        prompts = self._subset(blocks.input_ids)
        fingerprint = self.fingerprint(teacher_fingerprint, prompts)
        self.path = self.cache_dir / f"{fingerprint}.pt"
        self.generated = False
        seconds = 0.0
        if trainer.strategy.broadcast(not self.path.exists(), src=0):
            # Every rank enters: gathering a sharded teacher is a collective; rank 0 writes.
            with pl_module.full_teacher() as teacher:
                if trainer.is_global_zero:
                    sequences, seconds = self._generate(teacher, prompts, trainer.strategy.root_device)
                    self._store(sequences, fingerprint, teacher_fingerprint, seconds)
                    self.generated = True
        trainer.strategy.barrier("teacher_sequences")  # the other ranks wait for rank 0's file
        saved = torch.load(self.path, weights_only=True)
        self.sequences = TokenBlocks(saved["input_ids"], saved["labels"])
        self._replaced = (datamodule, original)
        datamodule.train_set = (
            IndexedDataset(self.sequences) if isinstance(original, IndexedDataset) else self.sequences
        )
        self._report(seconds)

    def _subset(self, input_ids: Tensor) -> Tensor:
        """The rows to continue: all of them, or ``max_sequences`` chosen at random (fixed by ``seed``)."""
        if self.max_sequences is None or self.max_sequences >= input_ids.shape[0]:
            return input_ids
        order = torch.randperm(input_ids.shape[0], generator=torch.Generator().manual_seed(self.seed))
        return input_ids[order[: self.max_sequences].sort().values]

    def _generate(self, teacher: nn.Module, input_ids: Tensor, device: torch.device) -> tuple[TokenBlocks, float]:
        """The teacher's sequences, and the seconds their generation took."""
        # At setup the module is not on its device yet: the teacher goes there for the generation only.
        home = model_device(teacher)
        teacher.to(device)
        start = time.perf_counter()
        try:
            sequences = teacher_continuations(
                teacher,
                input_ids,
                self.prompt_length,
                self.max_new_tokens,
                greedy=self.greedy,
                temperature=self.temperature,
                top_k=self.top_k,
                seed=self.seed,
                batch_size=self.batch_size,
            )
        finally:
            teacher.to(home)
        return sequences, time.perf_counter() - start

    def _store(self, sequences: TokenBlocks, fingerprint: str, teacher_fingerprint: str, seconds: float) -> None:
        """Write the sequences, then their description (the ``.pt`` file is complete once it exists)."""
        save_torch(self.path, {"input_ids": sequences.input_ids, "labels": sequences.labels})
        save_json(
            self.path.with_suffix(".json"),
            {
                "fingerprint": fingerprint,
                "teacher_fingerprint": teacher_fingerprint,
                "settings": self.settings(),
                "num_sequences": int(sequences.input_ids.shape[0]),
                "sequence_length": int(sequences.input_ids.shape[1]),
                "generation_seconds": round(seconds, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )

    @rank_zero_only
    def _report(self, seconds: float) -> None:
        rows, length = self.sequences.input_ids.shape
        if self.generated:
            log.info("teacher sequences generated in %.1f s: %s (%d x %d tokens)", seconds, self.path, rows, length)
        else:
            log.info("teacher sequences reused: %s (%d x %d tokens)", self.path, rows, length)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._replaced is not None:
            datamodule, original = self._replaced
            datamodule.train_set = original  # a later fit sees (and fingerprints) the original text again
            self._replaced = None


def _current_teacher_fingerprint(trainer: L.Trainer, module: CausalLMDistillationModule) -> str:
    """The value of ``module.teacher_fingerprint()`` for the teacher as it is now, rank 0's on every rank.

    ``teacher_fingerprint()`` is computed once per fit, at ``on_fit_start``, which comes after the
    callbacks' ``setup``: there it may still hold the previous fit's value, from before the
    teacher's weights were replaced.
    """
    with module.full_teacher() as teacher:
        local = module_fingerprint(teacher)
    return trainer.strategy.broadcast(local, src=0)
