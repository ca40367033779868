"""The error of storing only the top-k teacher logits (and of float16), against full float32 logits.

On the Fashion-MNIST CNN workload of distillation_speed.py: the teacher is trained for a few
epochs, the student for one epoch with cross-entropy, so that both make realistic logits. For
each temperature and k, over the whole set: the relative error of the soft loss and of its
gradient on the student's logits, with the cache's top-k renormalisation.

    python benchmarks/topk_error.py [--samples 10000] [--teacher-epochs 3]

It ends by building the float16 cache of the whole 60,000-image training set with that teacher
(when Fashion-MNIST is installed), and reports its size and build time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from distillation_speed import FASHION_ROOT, load_workload  # noqa: E402

from lightning_kd import soft_target_loss  # noqa: E402
from lightning_kd.data import IndexedDataset  # noqa: E402
from lightning_kd.teacher_outputs import TeacherOutputCache  # noqa: E402


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        for index in torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()


def soft_loss_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    logits = student_logits.clone().requires_grad_(True)
    loss = soft_target_loss(logits, teacher_logits, temperature)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.item(), grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    x, y, teacher, student, _, description = load_workload("fashion", args.samples)
    train(teacher, x, y, args.teacher_epochs)
    train(student, x, y, 1)
    with torch.inference_mode():
        teacher_logits = torch.cat([teacher(part) for part in x.split(512)])
        student_logits = torch.cat([student(part) for part in x.split(512)])
    teacher_accuracy = (teacher_logits.argmax(-1) == y).float().mean().item()
    student_accuracy = (student_logits.argmax(-1) == y).float().mean().item()
    print(f"{description}; train accuracy: teacher {teacher_accuracy:.3f}, student {student_accuracy:.3f}")

    dataset = IndexedDataset(TensorDataset(x))
    batches = DataLoader(dataset, batch_size=None, sampler=BatchSampler(SequentialSampler(dataset), 512, False))
    root = Path(tempfile.mkdtemp(prefix="kd-topk-"))
    caches = {
        (dtype, k): TeacherOutputCache.build(
            teacher, batches, root, f"{dtype}-{k}", len(y), dtype=dtype, top_k=k, progress=False
        ).lookup(torch.arange(len(y)))
        for dtype, k in [("float16", None), ("float16", 1), ("float16", 2), ("float16", 3), ("float16", 5)]
    }
    print("\n| T | storage | MB for 60k samples | soft loss rel. error | gradient rel. error |")
    print("|---:|---|---:|---:|---:|")
    for temperature in (1.0, 4.0, 20.0):
        exact_loss, exact_grad = soft_loss_and_grad(student_logits, teacher_logits, temperature)
        for (dtype, k), stored in caches.items():
            loss, grad = soft_loss_and_grad(student_logits, stored, temperature)
            width = 10 if k is None else k
            megabytes = 60_000 * width * (2 if dtype == "float16" else 4) / 1e6 + (
                0 if k is None else 60_000 * k * 2 / 1e6  # int16 class indices
            )
            print(
                f"| {temperature:g} | {dtype}{'' if k is None else f', top-{k}'} | {megabytes:.2f} | "
                f"{abs(loss - exact_loss) / exact_loss:.2e} | {(grad - exact_grad).norm() / exact_grad.norm():.2e} |"
            )

    if (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        full_cache(teacher)


def full_cache(teacher: torch.nn.Module) -> None:
    """Build the float16 cache of the whole Fashion-MNIST training set: one pass of the teacher."""
    x, _, _, _, _, _ = load_workload("fashion", 60_000)
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    dataset = IndexedDataset(TensorDataset(x))
    batches = DataLoader(dataset, batch_size=None, sampler=BatchSampler(SequentialSampler(dataset), 512, False))
    started = time.perf_counter()
    cache = TeacherOutputCache.build(
        teacher, batches, tempfile.mkdtemp(prefix="kd-full-"), "full", len(x), progress=False
    )
    seconds = time.perf_counter() - started
    on_disk = sum(p.stat().st_size for p in cache.directory.iterdir())
    print(
        f"\nfull training set: {cache.num_samples} x {cache.num_classes} float16 logits, {cache.nbytes() / 1e6:.2f} MB "
        f"({on_disk / 1e6:.2f} MB on disk with meta.json), built in {seconds:.1f} s; "
        f"teacher forward passes: {len(calls)} batches, {sum(calls)} samples (one pass)"
    )


if __name__ == "__main__":
    main()
