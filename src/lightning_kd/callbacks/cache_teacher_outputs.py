"""``CacheTeacherOutputs``: compute the teacher's logits once, read them back every epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_kd.batch import split_batch
from lightning_kd.checks import check_positive_int
from lightning_kd.data.indexed import IndexedDataset
from lightning_kd.data.token_blocks import TokenBlocks
from lightning_kd.distillable import DistillableModule, require_distillable
from lightning_kd.fingerprint import dataset_fingerprint
from lightning_kd.teacher_outputs import CACHE_DTYPES, TeacherOutputCache, cache_fingerprint

__all__ = ["CacheTeacherOutputs", "TeacherOutputMismatchError"]

log = logging.getLogger(__name__)

# |live - cached| <= atol + rtol * |live|: float16 rounds to 2**-11 relative; float32 differs only
# by the order of a batch's reductions when the batch size differs.
TOLERANCES = {"float16": (2e-3, 2e-3), "float32": (1e-4, 1e-5)}


class TeacherOutputMismatchError(RuntimeError):
    """The cached teacher outputs differ from a live teacher forward on the same samples."""


class CacheTeacherOutputs(L.Callback):
    """Offline distillation: the teacher runs once over the training set, not on every step.

    Before the first epoch it computes the teacher's logits for every training sample, in one
    pass with a progress bar, and stores them memory-mapped in ``dirpath`` (see
    :class:`~lightning_kd.teacher_outputs.TeacherOutputCache`). Training steps then read them by
    sample index instead of running the teacher. The training dataset must yield the index:
    wrap it in :class:`~lightning_kd.data.IndexedDataset` (``TensorDataModule(with_index=True)``
    does). Validation and test still run the teacher, at ``T = 1``.

    A cache is reused by later runs when its fingerprint matches: a hash of the teacher's
    identity (the module's ``teacher_fingerprint()``, the same on every rank and computed on the
    full teacher under FSDP), the dataset's identity and length, and the storage settings;
    anything else rebuilds it. It is written atomically.

    Cached logits are wrong if the inputs change from epoch to epoch (random crops, flips,
    noise). At the start of each of the first ``verify_epochs`` epochs, the first
    ``verify_batches`` (shuffled, so random) batches are checked against a live teacher forward;
    a mismatch beyond the storage's rounding raises :class:`TeacherOutputMismatchError`.

    Only logits are stored: a module that distils intermediate features
    (``DistillationModule(feature_pairs=...)``) needs the live teacher on every step, and is refused.

    Args:
        dirpath: Folder of the caches; ``<trainer.default_root_dir>/teacher_outputs`` when ``None``.
        dtype: ``"float16"`` (default, half the size) or ``"float32"`` (exact).
        top_k: Keep only the ``k`` largest logits per sample (for many classes); the soft loss
            then uses the teacher distribution renormalised over those ``k`` classes.
        verify_epochs: Number of first epochs whose start is checked against the live teacher.
        verify_batches: Batches checked at the start of each of those epochs.
        batch_size: Batch size of the build pass; the training loader's when ``None``.
        dataset_id: An explicit identity of the training set, for datasets that do not expose
            their tensors (see :func:`~lightning_kd.fingerprint.dataset_fingerprint`).

    Example:
        >>> from lightning_kd.callbacks import CacheTeacherOutputs
        >>> CacheTeacherOutputs(dirpath="teacher_outputs", dtype="float16").dtype
        'float16'
    """

    def __init__(
        self,
        dirpath: Optional[Union[str, Path]] = None,
        dtype: str = "float16",
        top_k: Optional[int] = None,
        verify_epochs: int = 2,
        verify_batches: int = 2,
        batch_size: Optional[int] = None,
        dataset_id: Optional[str] = None,
    ):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        check_positive_int("top_k", top_k, allow_none=True)
        check_positive_int("batch_size", batch_size, allow_none=True)
        for name, value in (("verify_epochs", verify_epochs), ("verify_batches", verify_batches)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.dtype = dtype
        self.top_k = top_k
        self.verify_epochs = verify_epochs
        self.verify_batches = verify_batches
        self.batch_size = batch_size
        self.dataset_id = dataset_id
        self.cache: Optional[TeacherOutputCache] = None
        self.built = False  # whether this fit computed the cache (False: reused)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            require_distillable(type(self).__name__, pl_module)
        if stage == "fit" and getattr(pl_module, "feature_pairs", None):
            raise ValueError(
                f"{type(self).__name__} stores the teacher's logits only, but this {type(pl_module).__name__} has "
                "feature_pairs: their teacher features come from a live teacher forward on every step and cannot be "
                "stored. Drop the callback (distill/teacher_outputs=live in kd-train) or the feature pairs"
            )
        augment = getattr(trainer.datamodule, "augment", None) if stage == "fit" else None
        if augment is not None:
            raise ValueError(
                f"{type(self).__name__} stores the teacher's outputs on fixed training inputs, but the datamodule "
                f"augments them ({augment!r}), so they change every epoch: drop the augmentation or the callback"
            )
        if stage == "fit" and self.top_k is not None and getattr(pl_module.loss, "objective", "kl") != "kl":
            raise ValueError(
                f"top_k={self.top_k} needs the KL soft loss (objective='kl'); logit matching needs every logit"
            )
        if stage == "fit" and pl_module.token_level and self.top_k is None:
            raise ValueError(
                f"{type(pl_module).__name__} teachers are stored as top-k logits per token (every logit of every "
                "token would take tokens x vocabulary values): pass top_k, e.g. CacheTeacherOutputs(top_k=64)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if not isinstance(dataset, IndexedDataset):
            raise TypeError(
                "CacheTeacherOutputs needs a training dataset that yields sample indices: wrap it in "
                "lightning_kd.data.IndexedDataset (or use TensorDataModule(with_index=True)); "
                f"got {type(dataset).__name__}"
            )
        identity = self.dataset_id or dataset_fingerprint(dataset)
        fingerprint = cache_fingerprint(
            pl_module.teacher_fingerprint(), identity, self.dtype, self.top_k, pl_module.vocabulary_identity()
        )
        root = self.dirpath or Path(trainer.default_root_dir) / "teacher_outputs"
        self.built = False
        missing = trainer.strategy.broadcast(TeacherOutputCache.open(root, fingerprint) is None, src=0)
        if missing:
            # Every rank enters: gathering a sharded (FSDP) teacher is a collective; rank 0 writes.
            with pl_module.full_teacher():
                if trainer.is_global_zero:
                    TeacherOutputCache.build(
                        pl_module.teacher_logits,
                        self._build_batches(dataset, loader),
                        root,
                        fingerprint,
                        num_samples=len(dataset),
                        dtype=self.dtype,
                        top_k=self.top_k,
                        device=pl_module.device,
                        progress=trainer.progress_bar_callback is not None,
                    )
                    self.built = True
        trainer.strategy.barrier("teacher_outputs")  # the other ranks wait for rank 0's cache
        self.cache = TeacherOutputCache.open(root, fingerprint)
        if self.cache is None:
            raise FileNotFoundError(f"no teacher cache with fingerprint {fingerprint[:16]} under {root}")
        self._report(self.cache)
        pl_module.teacher_outputs = self.cache

    @rank_zero_only
    def _report(self, cache: TeacherOutputCache) -> None:
        verb = "built" if self.built else "reused"
        log.info(
            "teacher outputs %s: %s (%d x %d %s, %.2f MB)",
            verb,
            cache.directory,
            cache.num_samples,
            cache.top_k or cache.num_classes,
            cache.dtype,
            cache.nbytes() / 1e6,
        )

    def _build_batches(self, dataset: IndexedDataset, loader: DataLoader) -> DataLoader:
        batch_size = self.batch_size or getattr(loader, "batch_size", None) or _sampler_batch_size(loader) or 256
        if isinstance(dataset.dataset, (TensorDataset, TokenBlocks)):  # index whole batches: no per-sample collation
            sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
            return DataLoader(dataset, batch_size=None, sampler=sampler)
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn
        )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.cache is None or trainer.current_epoch >= self.verify_epochs or batch_idx >= self.verify_batches:
            return
        parts = split_batch(batch)
        live = pl_module.teacher_logits(parts.x).float()
        if self.top_k is None:
            cached = self.cache.lookup(parts.index, live.device)
        else:  # the stored logits only, read from the live ones at the stored classes
            top = self.cache.lookup_top_k(parts.index, live.device)
            live, cached = live.gather(-1, top.indices), top.values
        rtol, atol = TOLERANCES[self.dtype]
        difference = (live - cached).abs().reshape(live.shape[0], -1)
        excess = difference - (atol + rtol * live.abs().reshape(live.shape[0], -1))
        if excess.max() > 0:
            row = int(excess.max(dim=-1).values.argmax())
            difference = float(difference[row].max())
            raise TeacherOutputMismatchError(
                f"the cached teacher outputs differ from a live teacher forward at epoch {trainer.current_epoch}, "
                f"sample index {int(parts.index[row])}: max |difference| {difference:.3g} > {self.dtype} tolerance. "
                "The training inputs vary between epochs (random augmentation?), so teacher outputs cannot be cached: "
                "turn the cache off (distill/teacher_outputs=live in kd-train, or drop the CacheTeacherOutputs "
                "callback)"
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(pl_module, DistillableModule):
            pl_module.teacher_outputs = None


def _sampler_batch_size(loader: DataLoader) -> Optional[int]:
    """The batch size of a loader whose batch sampler yields lists of indices (``batch_size=None``)."""
    sampler = getattr(loader, "sampler", None)
    return getattr(sampler, "batch_size", None)
