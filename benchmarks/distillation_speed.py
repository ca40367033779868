"""Distillation speed, side by side: a hand-written loop, DistillationModule, the teacher cache, the student alone.

Every (workload, mode) runs in a fresh subprocess with the same data, models, batch size and
thread count, so that peak memory (RSS) is its own. Per run, an epoch's time is the median over
the epochs after the warm-up ones; the modes run in interleaved rounds and the median round is
reported. Only training is timed: no validation loop, no progress bar;
the Lightning runs log to CSV at the default interval (every 50 steps).

    python benchmarks/distillation_speed.py                      # both workloads, all modes
    python benchmarks/distillation_speed.py --workload digits --epochs 8 --json results.json

Modes:
    loop_kd        (a) hand-written PyTorch distillation loop: the no-framework reference
    lightning_kd   the same hand-written step in a minimal LightningModule: Lightning's own cost
    module         (b) DistillationModule under a Trainer
    loop_cached    (a) with the teacher's logits precomputed in memory: the no-framework floor of (c)
    module_cached  (c) (b) with CacheTeacherOutputs (float16); its one-off build is reported apart
    student        (d) the student alone (ClassifierModule, cross-entropy) under the same Trainer
    loop_student   the student alone in a hand-written loop
    monitor_1, monitor_50   (b) with DistillationMonitor measuring gradient norms every 1 / 50 steps
    compiled       (b) with the student wrapped in torch.compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ["loop_kd", "lightning_kd", "module", "loop_cached", "module_cached", "student", "loop_student"]
EXTRA_MODES = ["monitor_1", "monitor_50", "compiled"]
WORKLOADS = ["digits", "fashion"]
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
TEMPERATURE, ALPHA, LR = 4.0, 0.9, 1e-3


def load_workload(name: str, fashion_samples: int):
    """(x, y, teacher, student, batch_size, description) of a workload, seeded."""
    import torch

    from lightning_kd.models import CNN, MLP

    torch.manual_seed(0)
    if name == "digits":
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
        y = torch.tensor(labels)
        teacher = MLP(64, 10, hidden=(1200, 1200), dropout=0.3)
        student = MLP(64, 10, hidden=(30, 30))
        return x, y, teacher, student, 64, f"digits, {len(y)} images 8x8, MLP 1200-1200 -> MLP 30-30"
    if (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        from lightning_kd.data.fashion_mnist import read_idx

        images = read_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz")[:fashion_samples]
        x = torch.from_numpy(images.copy()).float().unsqueeze(1) / 255
        y = torch.from_numpy(read_idx(FASHION_ROOT / "train-labels-idx1-ubyte.gz")[:fashion_samples].copy()).long()
        source = "Fashion-MNIST"
    else:  # the same shapes, random content
        x, y = torch.rand(fashion_samples, 1, 28, 28), torch.randint(0, 10, (fashion_samples,))
        source = "random Fashion-MNIST-shaped"
    teacher = CNN(1, 10, channels=(64, 128), hidden=512, dropout=0.3)
    student = CNN(1, 10, channels=(16, 32), hidden=64)
    return x, y, teacher, student, 128, f"{source}, {len(y)} images 28x28, CNN 64-128-512 -> CNN 16-32-64"


def kd_loss(logits, teacher_logits, targets):
    """The math of DistillationLoss(TEMPERATURE, ALPHA), written out."""
    import torch.nn.functional as F

    soft = F.kl_div(
        F.log_softmax(logits / TEMPERATURE, -1),
        F.log_softmax(teacher_logits / TEMPERATURE, -1),
        reduction="batchmean",
        log_target=True,
    )
    return ALPHA * TEMPERATURE**2 * soft + (1 - ALPHA) * F.cross_entropy(logits, targets)


def hand_written(x, y, teacher, student, batch_size, epochs, distill: bool, precompute: bool = False) -> list[float]:
    """The reference: the same math as DistillationLoss, written out, no framework."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    teacher.eval()
    student.train()
    if precompute:
        with torch.inference_mode():
            all_teacher_logits = torch.cat([teacher(part) for part in x.split(512)])
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(y), batch_size):
            index = order[i : i + batch_size]
            xb, yb = x[index], y[index]
            logits = student(xb)
            if precompute:
                loss = kd_loss(logits, all_teacher_logits[index], yb)
            elif distill:
                with torch.inference_mode():
                    teacher_logits = teacher(xb)
                loss = kd_loss(logits, teacher_logits, yb)
            else:
                loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def with_trainer(x, y, teacher, student, batch_size, epochs, mode: str) -> tuple[list[float], dict]:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_kd import ClassifierModule, DistillationLoss, DistillationModule
    from lightning_kd.callbacks import CacheTeacherOutputs, DistillationMonitor
    from lightning_kd.data import IndexedDataset
    from lightning_kd.data.samplers import EpochBatchSampler

    class EpochTimer(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.start)

    class HandWrittenStep(L.LightningModule):
        """The loop's step, as it is, in a LightningModule: what Lightning itself costs."""

        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher.eval()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            logits = self.student(xb)
            with torch.inference_mode():
                teacher_logits = self.teacher(xb)
            return kd_loss(logits, teacher_logits, yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.student.parameters(), lr=LR)

    extra: dict = {}
    callbacks: list = []
    dataset = TensorDataset(x, y)
    if mode == "module_cached":
        dataset = IndexedDataset(dataset)
        cache = CacheTeacherOutputs(dirpath=tempfile.mkdtemp(prefix="kd-bench-cache-"))
        callbacks.append(cache)
    if mode.startswith("monitor_"):
        monitor = DistillationMonitor(grad_every_n_steps=int(mode.split("_")[1]))
        callbacks.append(monitor)
    # The in-memory fast path of TensorDataModule: one indexing per batch, no per-sample collation.
    loader = DataLoader(dataset, batch_size=None, sampler=EpochBatchSampler(len(y), batch_size, shuffle=True))
    optimizer = lambda params: torch.optim.Adam(params, lr=LR)  # noqa: E731
    if mode == "student":
        module = ClassifierModule(student, optimizer=optimizer)
    elif mode == "lightning_kd":
        module = HandWrittenStep()
    else:
        if mode == "compiled":
            student = torch.compile(student)
        loss = DistillationLoss(temperature=TEMPERATURE, alpha=ALPHA)
        module = DistillationModule(student, teacher, loss=loss, optimizer=optimizer)
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=CSVLogger(tempfile.mkdtemp(prefix="kd-bench-logs-")),
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(module, loader)
    total = time.perf_counter() - started
    if mode == "module_cached":
        extra["cache_build_s"] = total - sum(timer.times)
        extra["cache_mb"] = cache.cache.nbytes() / 1e6
    if mode.startswith("monitor_"):
        extra["grad_norm_s"] = monitor.grad_norm_seconds
    return timer.times, extra


def child(
    workload: str, mode: str, epochs: int, warmup: int, threads: int, fashion_samples: int, batch_size: int = 0
) -> dict:
    import torch

    torch.set_num_threads(threads)
    x, y, teacher, student, default_batch_size, description = load_workload(workload, fashion_samples)
    batch_size = batch_size or default_batch_size
    extra: dict = {}
    if mode.startswith("loop_"):
        times = hand_written(
            x, y, teacher, student, batch_size, epochs, distill=mode != "loop_student", precompute=mode == "loop_cached"
        )
    else:
        times, extra = with_trainer(x, y, teacher, student, batch_size, epochs, mode)
    steps = (len(y) + batch_size - 1) // batch_size
    return {
        "workload": workload,
        "description": description,
        "mode": mode,
        "epoch_ms": 1000 * statistics.median(times[warmup:]),
        "epoch_ms_all": [round(1000 * t, 2) for t in times],
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        **extra,
    }


def torch_version() -> str:
    from importlib.metadata import version

    return f"{version('torch')}, lightning {version('lightning')}"


def run_child(args: argparse.Namespace, workload: str, mode: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        workload,
        mode,
        f"--epochs={args.epochs}",
        f"--warmup={args.warmup}",
        f"--threads={args.threads}",
        f"--fashion-samples={args.fashion_samples}",
        f"--batch-size={args.batch_size}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{workload}/{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        rows = {r["mode"]: r for r in results if r["workload"] == workload}
        first = next(iter(rows.values()))
        lines += [
            "",
            f"### {first['description']}",
            f"teacher {first['teacher_params']:,} parameters, student {first['student_params']:,}; "
            f"batch {first['batch_size']}, {first['steps_per_epoch']} steps per epoch",
            "",
            "| mode | epoch (ms, median) | per step (ms) | peak RSS (MB) | notes |",
            "|---|---:|---:|---:|---|",
        ]
        for mode, row in rows.items():
            notes = []
            if "cache_build_s" in row:
                notes.append(f"cache built once in {row['cache_build_s']:.2f} s, {row['cache_mb']:.3f} MB")
            if "grad_norm_s" in row:
                notes.append(f"gradient norms: {row['grad_norm_s'] * 1000:.1f} ms in all")
            lines.append(
                f"| {mode} | {row['epoch_ms']:.1f} | {row['epoch_ms'] / row['steps_per_epoch']:.3f} | "
                f"{row['peak_rss_mb']:.0f} | {'; '.join(notes)} |"
            )
        ratios = [
            ("(b)/(a) module / hand-written", "module", "loop_kd"),
            ("(c)/(d) cached / student", "module_cached", "student"),
            ("Lightning alone: lightning_kd / hand-written", "lightning_kd", "loop_kd"),
            ("our module alone: module / lightning_kd", "module", "lightning_kd"),
            ("the math alone: loop_cached / loop_student", "loop_cached", "loop_student"),
        ]
        ratios += [
            ("(b)/(c) online / cached", "module", "module_cached"),
            ("(d)/loop_student", "student", "loop_student"),
        ]
        ratios += [(f"{m} / module", m, "module") for m in EXTRA_MODES]
        lines.append("")
        for label, top, bottom in ratios:
            if top in rows and bottom in rows:
                lines.append(f"- {label}: **{rows[top]['epoch_ms'] / rows[bottom]['epoch_ms']:.3f}**")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES + EXTRA_MODES}")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="first epochs left out of the median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, interleaved; the median is kept")
    parser.add_argument("--fashion-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the workload's (digits 64, fashion 128)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(*args.child, args.epochs, args.warmup, args.threads, args.fashion_samples, args.batch_size)
            )
        )
        return
    workloads = WORKLOADS if args.workload == "all" else [args.workload]
    modes = args.modes.split(",")
    results = []
    for workload in workloads:
        # Rounds interleave the modes, so that a slow spell of a shared machine hits them all alike.
        rounds = [[run_child(args, workload, mode) for mode in modes] for _ in range(args.rounds)]
        for column, mode in enumerate(modes):
            runs = [round_[column] for round_ in rounds]
            merged = dict(runs[0])
            merged["epoch_ms"] = statistics.median(run["epoch_ms"] for run in runs)
            merged["epoch_ms_rounds"] = [round(run["epoch_ms"], 2) for run in runs]
            merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
            for key in ("cache_build_s", "grad_norm_s"):
                if key in merged:
                    merged[key] = statistics.median(run[key] for run in runs)
            results.append(merged)
            print(f"{workload:>8} {mode:<14} {merged['epoch_ms']:9.1f} ms/epoch", file=sys.stderr, flush=True)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, torch {torch_version()}, {args.threads} threads")
    print(f"{args.rounds} rounds x {args.epochs} epochs; per round the median of the last {args.epochs - args.warmup}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
