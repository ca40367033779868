"""``TeacherOutputCache``: the teacher's outputs (logits) for every training sample, on disk, memory-mapped.

Offline distillation: when the training inputs are the same in every epoch, the teacher's
outputs are too, so they are computed once and read back by sample index instead of running
the teacher on every step. A cache is a folder ``teacher-<fingerprint>/`` holding
``logits.npy`` (``[N, C]``, or ``[N, k]`` with ``indices.npy`` in top-k mode) and
``meta.json``. It is built in a temporary folder and renamed into place, so a folder with the
final name is always complete, and a killed build leaves nothing that can be mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from lightning_kd.batch import split_batch
from lightning_kd.losses.topk import TopKLogits

__all__ = ["CACHE_DTYPES", "TOPK_FILL", "TeacherOutputCache", "cache_fingerprint"]

CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Logit given to the classes outside the top k: softmax(TOPK_FILL / T) is exactly 0 in float32
# for any T below 1e7, and unlike -inf it keeps 0 * (log p - log q) at 0 in the KL divergence.
TOPK_FILL = -1e9
FORMAT_VERSION = 1


def cache_fingerprint(
    teacher_fingerprint: str,
    dataset_fingerprint: str,
    dtype: str,
    top_k: Optional[int],
    vocabulary: Optional[str] = None,
) -> str:
    """The key of a cache: the teacher's weights, the dataset's identity and length, the storage,
    and for language models the tokenizer's vocabulary (its declared identity)."""
    key = json.dumps([FORMAT_VERSION, teacher_fingerprint, dataset_fingerprint, dtype, top_k, vocabulary])
    return hashlib.sha256(key.encode()).hexdigest()


class TeacherOutputCache:
    """A complete cache of teacher logits, opened memory-mapped.

    Use :meth:`build` to compute one and :meth:`open` to find an existing one.

    Args:
        directory: A cache folder written by :meth:`build`.

    Example:
        >>> import tempfile, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_kd.data import IndexedDataset
        >>> data = IndexedDataset(TensorDataset(torch.randn(10, 4)))
        >>> teacher = torch.nn.Linear(4, 3)
        >>> cache = TeacherOutputCache.build(teacher, DataLoader(data, batch_size=4), tempfile.mkdtemp(),
        ...                                  fingerprint="demo", num_samples=10, progress=False)
        >>> cache.lookup(torch.tensor([0, 7])).shape
        torch.Size([2, 3])
    """

    def __init__(self, directory: Union[str, os.PathLike]):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.values = np.load(self.directory / "logits.npy", mmap_mode="r")
        self.indices = np.load(self.directory / "indices.npy", mmap_mode="r") if self.top_k else None

    @property
    def num_samples(self) -> int:
        return int(self.meta["num_samples"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def top_k(self) -> Optional[int]:
        return self.meta["top_k"]

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    def nbytes(self) -> int:
        """Bytes of the stored arrays."""
        return self.values.nbytes + (0 if self.indices is None else self.indices.nbytes)

    def _rows(self, index: Tensor) -> np.ndarray:
        rows = index.detach().cpu().numpy()
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_samples):
            raise IndexError(
                f"sample index out of the cache's range [0, {self.num_samples}): {rows.min()}..{rows.max()}"
            )
        return rows

    def lookup(self, index: Tensor, device: Optional[torch.device] = None) -> Tensor:
        """Float32 logits ``[B, ..., C]`` of the samples ``index``; top-k mode fills the rest with ``TOPK_FILL``."""
        rows = self._rows(index)
        values = torch.from_numpy(np.ascontiguousarray(self.values[rows])).float()
        if self.indices is not None:
            dense = torch.full((*values.shape[:-1], self.num_classes), TOPK_FILL)
            dense.scatter_(-1, torch.from_numpy(self.indices[rows].astype(np.int64)), values)
            values = dense
        return values if device is None else values.to(device, non_blocking=True)

    def lookup_top_k(self, index: Tensor, device: Optional[torch.device] = None) -> TopKLogits:
        """The stored top-k logits of the samples ``index`` as :class:`~lightning_kd.losses.TopKLogits`
        (``[B, ..., k]``, float32 values, int64 indices), without building a dense tensor."""
        if self.indices is None:
            raise ValueError("lookup_top_k needs a cache built with top_k; this one stores every logit")
        rows = self._rows(index)
        values = torch.from_numpy(np.ascontiguousarray(self.values[rows])).float()
        indices = torch.from_numpy(self.indices[rows].astype(np.int64))
        top = TopKLogits(values, indices)
        return top if device is None else top.to(device, non_blocking=True)

    @classmethod
    def open(cls, root: Union[str, os.PathLike], fingerprint: str) -> Optional[TeacherOutputCache]:
        """The complete cache with this fingerprint under ``root``, or ``None``."""
        directory = Path(root) / f"teacher-{fingerprint[:16]}"
        if not (directory / "meta.json").is_file():
            return None
        cache = cls(directory)
        return cache if cache.meta.get("fingerprint") == fingerprint else None

    @classmethod
    def build(
        cls,
        teacher: Callable[[Any], Tensor],
        batches: Iterable[Any],
        root: Union[str, os.PathLike],
        fingerprint: str,
        num_samples: int,
        dtype: str = "float16",
        top_k: Optional[int] = None,
        device: Optional[torch.device] = None,
        progress: bool = True,
    ) -> TeacherOutputCache:
        """Run ``teacher`` once over ``batches`` (dicts with ``"x"`` and ``"index"``) and store its logits.

        ``teacher`` is a module (run in eval mode) or any callable returning logits, such as
        ``DistillationModule.teacher_logits``.

        Every index in ``[0, num_samples)`` must appear; the cache is renamed into
        ``root/teacher-<fingerprint>`` only when all rows are written.
        """
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"teacher-{fingerprint[:16]}"
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            meta = cls._write_arrays(teacher, batches, staging, num_samples, dtype, top_k, device, progress)
            meta["fingerprint"] = fingerprint
            (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            try:
                os.rename(staging, final)  # atomic; fails if another process finished first
            except OSError:
                if cls.open(root, fingerprint) is None:
                    raise
                shutil.rmtree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(final)

    @staticmethod
    def _write_arrays(
        teacher: Callable[[Any], Tensor],
        batches: Iterable[Any],
        directory: Path,
        num_samples: int,
        dtype: str,
        top_k: Optional[int],
        device: Optional[torch.device],
        progress: bool,
    ) -> dict[str, Any]:
        values = indices = None
        written = np.zeros(num_samples, dtype=bool)
        was_training = isinstance(teacher, nn.Module) and teacher.training
        if was_training:
            teacher.eval()
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="caching teacher outputs", unit="batch", leave=False)
        try:
            for batch in batches:
                parts = split_batch(batch)
                if parts.index is None:
                    raise TypeError("cache batches need sample indices: wrap the dataset in IndexedDataset")
                x = parts.x
                if device is not None:  # a tensor, or the keyword inputs of a tokenized batch
                    x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
                with torch.inference_mode():
                    logits = teacher(x).float()
                num_classes = logits.shape[-1]
                if values is None:
                    width = num_classes if top_k is None else min(top_k, num_classes)
                    shape = (num_samples, *logits.shape[1:-1], width)  # [N, C], or [N, L, k] for sequences
                    values = np.lib.format.open_memmap(
                        directory / "logits.npy", mode="w+", dtype=CACHE_DTYPES[dtype], shape=shape
                    )
                    if top_k is not None:
                        index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
                        indices = np.lib.format.open_memmap(
                            directory / "indices.npy", mode="w+", dtype=index_dtype, shape=shape
                        )
                elif logits.shape[1:-1] != values.shape[1:-1]:
                    raise ValueError(
                        f"every sample must have the same positions to be cached: got {tuple(logits.shape[1:-1])} "
                        f"after {tuple(values.shape[1:-1])} (pad or pack the sequences to one length)"
                    )
                rows = parts.index.cpu().numpy()
                if top_k is not None:
                    top = logits.topk(values.shape[-1], dim=-1)
                    values[rows] = top.values.cpu().numpy()
                    indices[rows] = top.indices.cpu().numpy()
                else:
                    values[rows] = logits.cpu().numpy()
                written[rows] = True
        finally:
            if was_training:
                teacher.train()
        if values is None or not written.all():
            missing = int((~written).sum())
            raise ValueError(
                f"the batches covered {num_samples - missing} of {num_samples} samples; the cache needs all"
            )
        values.flush()
        if indices is not None:
            indices.flush()
        return {
            "format_version": FORMAT_VERSION,
            "num_samples": num_samples,
            "num_classes": int(num_classes),
            "dtype": dtype,
            "top_k": top_k,
        }
