"""How many torch threads the text experiments should use on a small shared CPU machine.

Times training steps (forward, backward, Adam) of the networks of `experiment=shakespeare_lm`
and `experiment=bbc_news_minilm` at each thread count, once with the other cores idle and once
with every core but one kept busy by another process (as when two jobs share a 2-core machine).
Each (load, network, threads) runs in a fresh process; the rounds interleave the settings and
the median is kept. Reported: milliseconds per step, and each setting's time relative to 1 thread.

    python benchmarks/thread_count.py               # threads 1 and 2, 3 rounds
    python benchmarks/thread_count.py --threads 1 2 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

NETWORKS = {
    # name: (what it is, batch shape)
    "gpt_2l128 student": ("gpt", 2, 128, (16, 64)),
    "gpt_4l192 teacher": ("gpt", 4, 192, (16, 64)),
    "minilm_2l student": ("minilm", 2, None, (16, 64)),
    "minilm teacher": ("minilm", None, None, (16, 64)),
}


def time_steps(name: str, threads: int, steps: int) -> float:
    """Median milliseconds of one training step of ``name`` at ``threads`` threads (in this process)."""
    import torch

    torch.set_num_threads(threads)
    from lightning_kd.models import gpt2_lm, minilm_classifier

    kind, layers, width, (batch, length) = NETWORKS[name]
    torch.manual_seed(0)
    if kind == "gpt":
        model = gpt2_lm(4096, length, n_layer=layers, n_embd=width, n_head=4)
        x = torch.randint(0, 4096, (batch, length))

        def loss() -> torch.Tensor:
            logits = model(input_ids=x).logits[:, :-1]
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    else:
        model = minilm_classifier(5, num_layers=layers)
        x, y = torch.randint(1000, 30000, (batch, length)), torch.randint(0, 5, (batch,))

        def loss() -> torch.Tensor:
            return torch.nn.functional.cross_entropy(model(x), y)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _busy() -> None:
    while True:
        pass


def measure(name: str, threads: int, steps: int, loaded: bool) -> float:
    busy = []
    if loaded:  # keep all cores but one busy, in other processes
        busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(max((os.cpu_count() or 2) - 1, 1))]
        for process in busy:
            process.start()
    try:
        command = [sys.executable, __file__, "--child", name, str(threads), str(steps)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return float(result.stdout.strip().splitlines()[-1])
    finally:
        for process in busy:
            process.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, threads, steps = args.child
        print(time_steps(name, int(threads), int(steps)))
        return
    results: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for loaded in (False, True):
            for name in args.networks:
                for threads in args.threads:
                    results.setdefault((loaded, name, threads), []).append(measure(name, threads, args.steps, loaded))
    print(f"{os.cpu_count()} CPU cores; ms per training step (median of {args.rounds} rounds) and ratio to 1 thread")
    print("| other cores | network | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads) + " |")
    print("|---|---|" + "---|" * len(args.threads))
    summary = []
    for loaded in (False, True):
        for name in args.networks:
            times = [statistics.median(results[(loaded, name, t)]) for t in args.threads]
            cells = " | ".join(f"{ms:.0f} ms ({ms / times[0]:.2f}x)" for ms in times)
            print(f"| {'busy' if loaded else 'idle'} | {name} | {cells} |")
            summary.append({"busy": loaded, "network": name, "ms": dict(zip(args.threads, times, strict=True))})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
