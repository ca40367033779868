"""Peak memory and time of the soft loss from hidden states: dense, chunked, and fused with the output head.

One language-model-sized soft loss, forward and backward, from the student's final hidden states
``hidden [N, H]`` (requires grad) and output head ``W [V, H]`` (requires grad) against teacher
logits ``[N, V]`` (no grad), with the default N = 4,096 tokens, V = 32,768, H = 512:

    naive     logits = hidden @ W.T; soft_target_loss(logits, teacher_logits, T); backward
    chunked   the same logits; soft_target_loss(..., chunk_size=1024); backward
    fused     linear_soft_target_loss(hidden, W, teacher_logits, T, chunk_size=1024); backward

In ``naive`` and ``chunked`` the logits stay referenced until the backward pass ends, as in a
training step that holds them. Each (dtype, mode) runs in a fresh process (the script calls
itself with ``--child``); the modes run in interleaved rounds and the median round is kept.

Memory: the peak resident set size (RSS) during forward + backward, minus the RSS just before
it (after the inputs exist and after a warm-up step). The kernel's high-water mark ``VmHWM`` of
``/proc/self/status`` is reset before each measured step, and again between its forward and
backward pass (so each pass's own peak is reported too), by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0); where that fails, the script falls back to
``ru_maxrss`` and measures only the first step, so the warm-up runs on small shapes. The
gradients of ``hidden`` and ``W`` that the step leaves behind count in the peak (72 MiB in
float32 at the default sizes). PyTorch's CPU allocator does not cache, and glibc serves blocks
of this size with ``mmap``, so freed tensors leave the RSS at once.

    python benchmarks/lm_loss_memory.py                     # float32 and bfloat16, 3 rounds
    python benchmarks/lm_loss_memory.py --dtypes float32 --rounds 1 --reps 2 --threads 1
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
import time

MODES = ["naive", "chunked", "fused"]
DTYPES = ["float32", "bfloat16"]
TARGETS = {"chunked": 0.6, "fused": 0.2}  # memory, as a fraction of naive's
TIME_TARGET = 1.3  # time, as a multiple of naive's


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return status_kib("VmHWM") <= status_kib("VmRSS") + 64  # the reset took effect


def forward(mode: str, hidden, weight, teacher_logits, temperature: float, chunk_size: int):
    """The loss, and the logits that a training step would hold until its backward pass (None for fused)."""
    from lightning_kd.losses import linear_soft_target_loss, soft_target_loss

    if mode == "fused":
        return linear_soft_target_loss(hidden, weight, teacher_logits, temperature, chunk_size=chunk_size), None
    logits = hidden @ weight.T
    chunks = chunk_size if mode == "chunked" else None
    return soft_target_loss(logits, teacher_logits, temperature, chunk_size=chunks), logits


def make_inputs(tokens: int, vocab: int, width: int, dtype, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, width, generator=generator).to(dtype).requires_grad_(True)
    weight = (torch.randn(vocab, width, generator=generator) * width**-0.5).to(dtype).requires_grad_(True)
    teacher_logits = (torch.randn(tokens, vocab, generator=generator) * 2).to(dtype)
    return hidden, weight, teacher_logits


def child(args: argparse.Namespace, dtype_name: str, mode: str) -> dict:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, dtype_name)
    # Warm-up on small shapes: loads the code and thread pools before any baseline is read.
    small = make_inputs(64, 512, 32, dtype)
    forward(mode, *small, args.temperature, 16)[0].backward()
    del small
    hidden, weight, teacher_logits = make_inputs(args.tokens, args.vocab, args.hidden, dtype)
    inputs_mib = sum(t.numel() * t.element_size() for t in (hidden, weight, teacher_logits)) / 2**20
    resettable = reset_peak()
    times, peaks, forward_peaks, backward_peaks, losses = [], [], [], [], []
    for rep in range(args.reps + 1):  # rep 0: a full-size warm-up, timed and measured but not kept
        hidden.grad = weight.grad = None
        gc.collect()
        if resettable:
            reset_peak()
            baseline = status_kib("VmRSS")
        elif rep == 0:
            baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        start = time.perf_counter()
        loss, logits = forward(mode, hidden, weight, teacher_logits, args.temperature, args.chunk_size)
        if resettable:
            forward_peaks.append((status_kib("VmHWM") - baseline) / 1024)
            reset_peak()  # the high-water mark restarts at what the forward pass left alive
        loss.backward()
        elapsed = time.perf_counter() - start
        del logits
        losses.append(loss.item())
        times.append(elapsed)
        if resettable:
            backward_peaks.append((status_kib("VmHWM") - baseline) / 1024)
            peaks.append(max(forward_peaks[-1], backward_peaks[-1]))
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline if rep == 0 else float("nan")
            peaks.append(peak / 1024)
    kept_peaks = peaks[1:] if resettable else peaks[:1]
    return {
        "dtype": dtype_name,
        "mode": mode,
        "ms": 1000 * statistics.median(times[1:]),
        "ms_all": [round(1000 * t, 1) for t in times],
        "peak_mib": max(kept_peaks),
        "peak_mib_all": [round(p, 1) for p in peaks],
        # with a resettable high-water mark: the peaks of the forward pass and of the backward pass
        "forward_peak_mib": max(forward_peaks[1:]) if resettable else float("nan"),
        "backward_peak_mib": max(backward_peaks[1:]) if resettable else float("nan"),
        "inputs_mib": inputs_mib,
        "grads_mib": sum(t.grad.numel() * t.grad.element_size() for t in (hidden, weight)) / 2**20,
        "loss": losses[-1],
        "peak_method": "VmHWM after clear_refs=5" if resettable else "ru_maxrss (first step only)",
    }


def run_child(args: argparse.Namespace, dtype: str, mode: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        dtype,
        mode,
        f"--tokens={args.tokens}",
        f"--vocab={args.vocab}",
        f"--hidden={args.hidden}",
        f"--chunk-size={args.chunk_size}",
        f"--temperature={args.temperature}",
        f"--reps={args.reps}",
        f"--threads={args.threads}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{dtype}/{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| dtype | mode | peak above inputs (MiB) | forward / backward peak (MiB) | × naive | time (ms, median) "
        "| rounds (ms) | × naive |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    verdicts = []
    for dtype in dict.fromkeys(r["dtype"] for r in results):
        rows = {r["mode"]: r for r in results if r["dtype"] == dtype}
        naive = rows.get("naive")
        for mode, row in rows.items():
            memory_ratio = row["peak_mib"] / naive["peak_mib"] if naive else float("nan")
            time_ratio = row["ms"] / naive["ms"] if naive else float("nan")
            lines.append(
                f"| {dtype} | `{mode}` | {row['peak_mib']:.0f} | {row['forward_peak_mib']:.0f} / "
                f"{row['backward_peak_mib']:.0f} | {memory_ratio:.2f} | {row['ms']:.0f} | "
                f"{', '.join(f'{t:.0f}' for t in row['ms_rounds'])} | {time_ratio:.2f} |"
            )
            if naive and mode in TARGETS:
                memory_met = "met" if memory_ratio <= TARGETS[mode] else "NOT met"
                time_met = "met" if time_ratio <= TIME_TARGET else "NOT met"
                verdicts.append(
                    f"- {dtype} `{mode}`: memory {memory_ratio:.2f}× naive (target ≤ {TARGETS[mode]}: "
                    f"{memory_met}), time {time_ratio:.2f}× naive (target ≤ {TIME_TARGET}: {time_met})"
                )
        if naive:
            spread = max(abs(r["loss"] - naive["loss"]) / abs(naive["loss"]) for r in rows.values())
            verdicts.append(f"- {dtype}: largest relative difference of the loss value from naive: {spread:.1e}")
    return "\n".join([*lines, "", *verdicts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {DTYPES}")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=1024, help="positions per chunk (chunked, fused)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3, help="timed steps per process, after one warm-up step")
    parser.add_argument("--rounds", type=int, default=3, help="processes per mode, interleaved; the median is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("DTYPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args, *args.child)))
        return
    modes, dtypes = args.modes.split(","), args.dtypes.split(",")
    results = []
    for dtype in dtypes:
        # Rounds interleave the modes, so that a slow spell of a shared machine hits them all alike.
        rounds = [[run_child(args, dtype, mode) for mode in modes] for _ in range(args.rounds)]
        for column, mode in enumerate(modes):
            runs = [round_[column] for round_ in rounds]
            merged = dict(runs[0])
            merged["ms"] = statistics.median(run["ms"] for run in runs)
            merged["ms_rounds"] = [run["ms"] for run in runs]
            merged["peak_mib"] = statistics.median(run["peak_mib"] for run in runs)
            merged["peak_mib_rounds"] = [round(run["peak_mib"], 1) for run in runs]
            for key in ("forward_peak_mib", "backward_peak_mib"):
                merged[key] = statistics.median(run[key] for run in runs)
            results.append(merged)
            print(
                f"{dtype:>8} {mode:<8} {merged['ms']:8.0f} ms  peak {merged['peak_mib']:6.0f} MiB "
                f"(rounds {merged['peak_mib_rounds']})",
                file=sys.stderr,
                flush=True,
            )
    first = results[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {__import__('torch').__version__}, {args.threads} threads"
    )
    print(
        f"{args.tokens} tokens, V = {args.vocab}, H = {args.hidden}, T = {args.temperature}, "
        f"chunk_size = {args.chunk_size}; {args.rounds} rounds x {args.reps} steps after a warm-up; "
        f"peak: {first['peak_method']}"
    )
    for dtype in dtypes:
        row = next(r for r in results if r["dtype"] == dtype)
        print(f"{dtype}: inputs {row['inputs_mib']:.0f} MiB, gradients of hidden and W {row['grads_mib']:.0f} MiB")
    print()
    print(table(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
