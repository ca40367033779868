"""Step time of CausalLMDistillationModule under a Trainer, against a hand-written loop doing the same math.

A tiny GPT-2 pair (teacher 4 layers, n_embd 128; student 2 layers, n_embd 64; random weights,
random token ids, all built locally), batches of 8 x 64 tokens. Modes:

    loop        hand-written PyTorch: teacher under inference_mode, the next-token shift,
                T**2 * forward KL (summed) + cross-entropy (summed), alpha-weighted, divided by
                the step's token count, Adam (or SGD)
    lightning   that same step in a bare LightningModule under the same Trainer: Lightning's own cost
    module      CausalLMDistillationModule(student, teacher, DistillationLoss(T, alpha)) under the Trainer

Each (threads, mode) runs in a fresh process with the same seeds, data and models; the modes run
in interleaved rounds and the median round is kept. Per run, a step's time is the median over
the epochs after the warm-up ones of (epoch time / steps per epoch). The Trainer runs with a
CSV logger at the default interval (every 50 steps), no validation loop, no progress bar, no
checkpointing. As a check that the math is the same, each run also reports the per-token loss
of its first step and the sum of the student's parameters after its last.

    python benchmarks/lm_step_time.py                          # 1 and 2 threads
    python benchmarks/lm_step_time.py --threads 2 --vocab 1024 --optimizer sgd --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ["loop", "lightning", "module"]
IGNORE_INDEX = -100


def make_models(vocab: int, context: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2(layers: int, width: int, heads: int, seed: int):
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=context,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(config)

    return gpt2(4, 128, 4, seed=0), gpt2(2, 64, 2, seed=1)


def make_batches(vocab: int, batch: int, context: int, steps: int) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (steps, batch, context), generator=generator)
    return [{"input_ids": step, "attention_mask": torch.ones_like(step)} for step in ids]


def hand_written_loss(student, teacher, batch: dict, temperature: float, alpha: float):
    """Loss per token: the math of CausalLMDistillationModule with DistillationLoss(temperature, alpha), written out."""
    import torch
    import torch.nn.functional as F

    ids, attention = batch["input_ids"], batch["attention_mask"]
    with torch.inference_mode():
        teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits[:, :-1]
    student_logits = student(input_ids=ids, attention_mask=attention).logits[:, :-1]
    targets = ids.masked_fill(attention == 0, IGNORE_INDEX)[:, 1:]
    mask = targets != IGNORE_INDEX
    tokens = mask.sum()
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    soft = F.kl_div(
        F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), reduction="sum", log_target=True
    )
    hard = F.cross_entropy(s, targets[mask], reduction="sum")
    return (alpha * temperature**2 * soft + (1 - alpha) * hard) / tokens.clamp(min=1)


def make_optimizer(name: str, lr: float):
    import torch

    if name == "sgd":
        return lambda params: torch.optim.SGD(params, lr=lr)
    return lambda params: torch.optim.Adam(params, lr=lr)


def run_loop(args, teacher, student, loader) -> tuple[list[float], float]:
    optimizer = make_optimizer(args.optimizer, args.lr)(student.parameters())
    teacher.eval()
    student.train()
    times, first_loss = [], None
    for _ in range(args.epochs):
        start = time.perf_counter()
        for batch in loader:
            loss = hand_written_loss(student, teacher, batch, args.temperature, args.alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if first_loss is None:
                first_loss = loss.item()
        times.append(time.perf_counter() - start)
    return times, first_loss


def run_trainer(args, teacher, student, loader, mode: str) -> tuple[list[float], float]:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_kd.losses import DistillationLoss
    from lightning_kd.text import CausalLMDistillationModule

    class Timer(L.Callback):
        def __init__(self):
            self.times: list[float] = []
            self.first_loss = None

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.start)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.first_loss is None:  # the module returns the sum over tokens, the bare step the mean
                tokens = outputs["mask"].sum() if "mask" in outputs else 1
                self.first_loss = float(outputs["loss"] / tokens)

    class HandWrittenStep(L.LightningModule):
        """The loop's step, as it is, in a LightningModule."""

        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher.eval()
            self.teacher.requires_grad_(False)

        def training_step(self, batch, batch_idx):
            return hand_written_loss(self.student, self.teacher, batch, args.temperature, args.alpha)

        def configure_optimizers(self):
            return make_optimizer(args.optimizer, args.lr)(self.student.parameters())

    if mode == "lightning":
        module = HandWrittenStep()
    else:
        loss = DistillationLoss(temperature=args.temperature, alpha=args.alpha)
        module = CausalLMDistillationModule(
            student, teacher, loss=loss, optimizer=make_optimizer(args.optimizer, args.lr)
        )
    timer = Timer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=CSVLogger(tempfile.mkdtemp(prefix="kd-lm-bench-logs-")),
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)
    return timer.times, timer.first_loss


def child(args: argparse.Namespace, threads: int, mode: str) -> dict:
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(threads)
    teacher, student = make_models(args.vocab, args.context)
    batches = make_batches(args.vocab, args.batch_size, args.context, args.steps_per_epoch)
    loader = DataLoader(batches, batch_size=None, shuffle=False)  # the same pre-built batches, every epoch
    if mode == "loop":
        times, first_loss = run_loop(args, teacher, student, loader)
    else:
        times, first_loss = run_trainer(args, teacher, student, loader, mode)
    kept = times[args.warmup :]
    return {
        "threads": threads,
        "mode": mode,
        "step_ms": 1000 * statistics.median(kept) / args.steps_per_epoch,
        "epoch_ms_all": [round(1000 * t, 1) for t in times],
        "first_loss": first_loss,
        "param_sum": float(sum(p.detach().double().sum() for p in student.parameters())),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
    }


def run_child(args: argparse.Namespace, threads: int, mode: str) -> dict:
    command = [sys.executable, __file__, "--child", str(threads), mode]
    for name in ("vocab", "context", "batch_size", "steps_per_epoch", "epochs", "warmup", "optimizer", "lr"):
        command.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    command += [f"--temperature={args.temperature}", f"--alpha={args.alpha}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{threads} threads / {mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, one table each")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="first epochs left out of the median")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, interleaved; the median is kept")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args, int(args.child[0]), args.child[1])))
        return
    modes = args.modes.split(",")
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        # Rounds interleave the modes, so that a slow spell of a shared machine hits them all alike.
        rounds = [[run_child(args, threads, mode) for mode in modes] for _ in range(args.rounds)]
        for column, mode in enumerate(modes):
            runs = [round_[column] for round_ in rounds]
            merged = dict(runs[0])
            merged["step_ms"] = statistics.median(run["step_ms"] for run in runs)
            merged["step_ms_rounds"] = [run["step_ms"] for run in runs]
            results.append(merged)
            print(f"{threads} threads {mode:<10} {merged['step_ms']:8.2f} ms/step", file=sys.stderr, flush=True)
    first = results[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {__import__('torch').__version__}, lightning {__import__('lightning').__version__}"
    )
    print(
        f"teacher GPT-2 4x128 ({first['teacher_params']:,} parameters), student GPT-2 2x64 "
        f"({first['student_params']:,}); V = {args.vocab}, batch {args.batch_size} x {args.context} tokens, "
        f"{args.optimizer} lr {args.lr}, T = {args.temperature}, alpha = {args.alpha}; {args.rounds} rounds x "
        f"{args.epochs} epochs of {args.steps_per_epoch} steps, median of the last {args.epochs - args.warmup}"
    )
    for threads in dict.fromkeys(r["threads"] for r in results):
        rows = {r["mode"]: r for r in results if r["threads"] == threads}
        print()
        print(f"{threads} thread{'s' if threads > 1 else ''}:")
        print()
        print("| mode | step (ms, median) | rounds (ms) | × loop | first-step loss per token | student param sum |")
        print("|---|---:|---|---:|---:|---:|")
        loop = rows.get("loop")
        for mode, row in rows.items():
            ratio = row["step_ms"] / loop["step_ms"] if loop else float("nan")
            print(
                f"| `{mode}` | {row['step_ms']:.2f} | {', '.join(f'{t:.2f}' for t in row['step_ms_rounds'])} | "
                f"{ratio:.2f} | {row['first_loss']:.6f} | {row['param_sum']:.6f} |"
            )
        print()
        for label, top, bottom in [
            ("module / loop", "module", "loop"),
            ("Lightning alone: lightning / loop", "lightning", "loop"),
            ("the module alone: module / lightning", "module", "lightning"),
        ]:
            if top in rows and bottom in rows:
                print(f"- {label}: **{rows[top]['step_ms'] / rows[bottom]['step_ms']:.3f}**")


if __name__ == "__main__":
    main()
