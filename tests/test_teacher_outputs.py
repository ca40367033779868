"""TeacherOutputCache: build, lookup, top-k renormalisation, size, and atomic writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_kd import soft_target_loss
from lightning_kd.data import IndexedDataset
from lightning_kd.teacher_outputs import TOPK_FILL, TeacherOutputCache


def sequential_batches(dataset, batch_size: int = 16) -> DataLoader:
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(SequentialSampler(dataset), batch_size, False))


def build(tmp_path, x, teacher, fingerprint: str = "f" * 64, **kwargs) -> TeacherOutputCache:
    dataset = IndexedDataset(TensorDataset(x))
    return TeacherOutputCache.build(
        teacher, sequential_batches(dataset), tmp_path, fingerprint, num_samples=len(x), progress=False, **kwargs
    )


def test_lookup_returns_the_teachers_logits_by_sample_index(tmp_path):
    torch.manual_seed(0)
    x, teacher = torch.randn(50, 4), torch.nn.Linear(4, 6)
    cache = build(tmp_path, x, teacher, dtype="float32")
    index = torch.tensor([49, 0, 17, 17])
    torch.testing.assert_close(cache.lookup(index), teacher(x[index]).detach(), rtol=0, atol=0)
    assert TeacherOutputCache.open(tmp_path, "f" * 64).directory == cache.directory
    assert TeacherOutputCache.open(tmp_path, "e" * 64) is None


def test_float16_storage_is_within_its_rounding(tmp_path):
    torch.manual_seed(0)
    x, teacher = torch.randn(50, 4), torch.nn.Linear(4, 6)
    cache = build(tmp_path, x, teacher)
    assert cache.values.dtype == np.float16
    exact = teacher(x).detach()
    torch.testing.assert_close(cache.lookup(torch.arange(50)), exact, rtol=2**-10, atol=1e-4)


def test_the_fashion_mnist_training_set_fits_in_under_2_mb(tmp_path):
    """60k x 10 logits in float16, built in one pass over the data."""
    calls = []

    class CountingTeacher(torch.nn.Linear):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    x = torch.randn(60_000, 8)
    dataset = IndexedDataset(TensorDataset(x))
    cache = TeacherOutputCache.build(
        CountingTeacher(8, 10), sequential_batches(dataset, 1024), tmp_path, "a" * 64, 60_000, progress=False
    )
    size = sum(p.stat().st_size for p in cache.directory.iterdir())
    assert cache.nbytes() == 60_000 * 10 * 2 and size < 2_000_000
    assert sum(calls) == 60_000  # each sample through the teacher once


def test_top_k_renormalises_the_teacher_distribution(tmp_path):
    torch.manual_seed(0)
    x, teacher = torch.randn(32, 4), torch.nn.Linear(4, 10)
    cache = build(tmp_path, x, teacher, dtype="float32", top_k=3)
    assert cache.values.shape == (32, 3) and cache.indices.shape == (32, 3)
    teacher_logits = teacher(x).detach()
    dense = cache.lookup(torch.arange(32))
    assert (dense != TOPK_FILL).sum(dim=-1).eq(3).all()

    student = torch.randn(32, 10, requires_grad=True)
    T = 4.0
    loss = soft_target_loss(student, dense, T)
    # By hand: the teacher's softmax at T restricted to its top 3 classes and renormalised.
    top = teacher_logits.topk(3, dim=-1)
    p = torch.zeros(32, 10).scatter(1, top.indices, torch.softmax(top.values / T, dim=-1))
    log_q = torch.log_softmax(student / T, dim=-1)
    expected = T**2 * (p * (torch.log(p.clamp_min(1e-30)) - log_q)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    # With k = C it is the full soft loss.
    full = build(tmp_path / "full", x, teacher, dtype="float32", top_k=10)
    torch.testing.assert_close(
        soft_target_loss(student, full.lookup(torch.arange(32)), T), soft_target_loss(student, teacher_logits, T)
    )


def test_an_incomplete_pass_is_refused_and_leaves_nothing(tmp_path):
    x = torch.randn(20, 4)
    dataset = IndexedDataset(TensorDataset(x))
    half = DataLoader(dataset, batch_size=None, sampler=BatchSampler(range(10), 5, False))
    with pytest.raises(ValueError, match="covered 10 of 20 samples"):
        TeacherOutputCache.build(torch.nn.Linear(4, 3), half, tmp_path, "b" * 64, 20, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_build_leaves_no_usable_cache(tmp_path):
    """SIGKILL in the middle of the pass: no cache opens, and the next build succeeds."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset
        from lightning_kd.data import IndexedDataset
        from lightning_kd.teacher_outputs import TeacherOutputCache

        class DyingTeacher(torch.nn.Linear):
            calls = 0
            def forward(self, x):
                DyingTeacher.calls += 1
                if DyingTeacher.calls == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().forward(x)

        dataset = IndexedDataset(TensorDataset(torch.randn(100, 4)))
        batches = DataLoader(dataset, batch_size=None, sampler=BatchSampler(SequentialSampler(dataset), 10, False))
        TeacherOutputCache.build(DyingTeacher(4, 3), batches, {str(tmp_path)!r}, "c" * 64, 100, progress=False)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers)
    assert TeacherOutputCache.open(tmp_path, "c" * 64) is None
    rebuilt = build(tmp_path, torch.randn(100, 4), torch.nn.Linear(4, 3), fingerprint="c" * 64)
    assert TeacherOutputCache.open(tmp_path, "c" * 64).directory == rebuilt.directory
