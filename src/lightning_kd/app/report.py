"""``kd-report``: aggregate the runs of a sweep into a table of mean ± std, and a plot.

Usage::

    kd-report multirun/2026-11-28/10-00-00

Reads every ``metrics.json`` that ``kd-train`` wrote below the folder, groups the runs by
setting (teacher, scratch student, distillation at each temperature, alpha and objective),
chooses the best distilled setting by the monitored metric in its direction (``monitor`` and
``monitor_mode`` of the runs: the highest ``val/acc``, the lowest ``val/loss``), prints a
table, writes ``report.md`` and ``report.json`` beside the runs, and plots test accuracy
against temperature (one line per alpha, with the scratch student and the teacher as reference
levels) into ``accuracy_vs_temperature.png`` when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple, Optional

from lightning_kd.app.results import METRICS_FILE
from lightning_kd.files import atomic_write, save_json

__all__ = ["Monitor", "Row", "collect_runs", "main", "monitor_of", "summarise"]

PLOT_FILE = "accuracy_vs_temperature.png"


def collect_runs(root: Path) -> list[dict]:
    """Load the ``metrics.json`` of each run below ``root``.

    A run nested in another (the teacher that a distillation run trained first) is left out:
    its teacher appears through the distillation run.
    """
    found = sorted(root.rglob(METRICS_FILE))
    run_dirs = {path.parent for path in found}
    runs = []
    for path in found:
        if any(parent in run_dirs for parent in path.parent.parents):
            continue
        run = json.loads(path.read_text())
        run["path"] = str(path.parent)
        runs.append(run)
    return runs


class Monitor(NamedTuple):
    """The metric the runs were selected by, and which way is better (``"max"`` or ``"min"``)."""

    name: str
    mode: str


def monitor_of(runs: list[dict]) -> Monitor:
    """The one monitor of ``runs``; files from before the mode was recorded are read as ``val/acc``, max.

    Raises:
        ValueError: if the runs were selected by different metrics or directions, or a mode is unknown.
    """
    found = set()
    for run in runs:
        if "name" not in run.get("monitor", {}):
            continue  # a teacher row built from a distillation run's record
        name, mode = run["monitor"]["name"], run["monitor"].get("mode")
        if mode is None:
            if name != "val/acc":
                raise ValueError(
                    f"{run.get('path', 'a run')}: metrics.json names monitor {name!r} without its mode; "
                    "re-run it with this version of kd-train, which records monitor_mode"
                )
            mode = "max"  # the only monitor of earlier versions' defaults
        if mode not in ("max", "min"):
            raise ValueError(f"{run.get('path', 'a run')}: monitor mode must be 'max' or 'min', got {mode!r}")
        found.add(Monitor(name, mode))
    if len(found) > 1:
        raise ValueError(
            "the runs were selected by different monitors, so they cannot be compared: "
            + ", ".join(f"{m.name} ({m.mode})" for m in sorted(found))
        )
    return found.pop() if found else Monitor("val/acc", "max")


class Row(dict):
    """One setting: ``label``, ``n``, and mean/std of test accuracy and the monitored metric."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # e.g. teachers known only from distillation runs: no monitor
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _setting(run: dict) -> tuple:
    if run["stage"] == "distill":
        d = run["distill"]
        if d.get("objective") == "dkd":  # its weight of note is beta_nckd; it has no alpha
            return ("distill", "dkd", float(d["beta_nckd"]), float(d["temperature"]))
        return ("distill", d.get("objective", "kl"), float(d["alpha"]), float(d["temperature"]))
    return (run["stage"],)


def _label(setting: tuple) -> str:
    if setting[0] == "distill":
        _, objective, weight, temperature = setting
        if objective == "dkd":
            return f"DKD (T={temperature:g}, beta={weight:g})"
        return f"distilled (T={temperature:g}, alpha={weight:g}{', mse' if objective == 'mse' else ''})"
    return {"student": "scratch student", "teacher": "teacher"}[setting[0]]


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Group the runs by setting and compute mean ± std over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[_setting(run)].append(run)
    # Teachers used by distillation runs, each counted once (a cached teacher serves many runs).
    teachers = {run["teacher"]["source"]: run["teacher"]["test/acc"] for run in runs if "teacher" in run}
    if ("teacher",) not in groups and teachers:
        groups[("teacher",)] = [
            {"test": {"test/acc": acc}, "monitor": {"value": math.nan}} for acc in teachers.values()
        ]

    rows = []
    order = {"teacher": 0, "student": 1, "distill": 2}
    for setting in sorted(groups, key=lambda s: (order[s[0]], s[1:])):
        members = groups[setting]
        acc_mean, acc_std = _mean_std([m["test"]["test/acc"] for m in members])
        mon_mean, mon_std = _mean_std([m["monitor"]["value"] for m in members])
        rows.append(
            Row(
                label=_label(setting),
                setting=list(setting),
                n=len(members),
                seeds=sorted(m["seed"] for m in members if "seed" in m),
                test_acc_mean=acc_mean,
                test_acc_std=acc_std,
                monitor_mean=mon_mean,
                monitor_std=mon_std,
            )
        )
    monitor = monitor_of(runs)
    summary: dict[str, Any] = {"rows": rows, "monitor": monitor._asdict()}
    distilled = [r for r in rows if r["setting"][0] == "distill"]
    scratch = next((r for r in rows if r["setting"][0] == "student"), None)
    if distilled and scratch:
        choose = max if monitor.mode == "max" else min
        best = choose(distilled, key=lambda r: r["monitor_mean"])  # chosen on validation, not test
        gain = best["test_acc_mean"] - scratch["test_acc_mean"]
        threshold = 2 * max(best["test_acc_std"], scratch["test_acc_std"])
        summary["comparison"] = {
            "best_distilled_by_validation": best["label"],
            "gain": gain,
            "two_max_std": threshold,
            "significant": gain > threshold,
        }
    sized = [run for run in runs if "latency_ms" in run]
    if sized:
        run = sized[0]
        student, teacher = run["params"]["student"], run["params"]["teacher"]
        latency = {k: statistics.median(r["latency_ms"][k] for r in sized) for k in ("student", "teacher")}
        summary["size"] = {
            "student_params": student,
            "teacher_params": teacher,
            "size_ratio": student / teacher,
            "student_latency_ms": latency["student"],
            "teacher_latency_ms": latency["teacher"],
            "speedup": latency["teacher"] / latency["student"],
        }
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, with the comparison and size lines below it."""
    monitor = Monitor(**summary.get("monitor", {"name": "val/acc", "mode": "max"}))
    direction = "higher is better" if monitor.mode == "max" else "lower is better"
    lines = [
        f"| setting | runs | test accuracy (mean ± std) | {monitor.name} (mean ± std, {direction}) |",
        "|---|---|---|---|",
    ]
    for row in summary["rows"]:
        val = "" if math.isnan(row["monitor_mean"]) else f"{row['monitor_mean']:.4f} ± {row['monitor_std']:.4f}"
        lines.append(
            f"| {row['label']} | {row['n']} | {row['test_acc_mean']:.4f} ± {row['test_acc_std']:.4f} | {val} |"
        )
    if "comparison" in summary:
        c = summary["comparison"]
        verdict = "a real gain" if c["significant"] else "NOT a significant gain"
        lines.append(
            f"\nBest distilled setting (chosen on {monitor.name}, {direction}): {c['best_distilled_by_validation']}: "
            f"{c['gain'] * 100:+.2f} points of test accuracy over the scratch student; "
            f"2 x the larger std = {c['two_max_std'] * 100:.2f} points: {verdict}."
        )
    if "size" in summary:
        s = summary["size"]
        lines.append(
            f"Student: {s['student_params']:,} parameters, {s['size_ratio'] * 100:.2f}% of the teacher's "
            f"{s['teacher_params']:,}; forward pass {s['student_latency_ms']:.3f} ms vs "
            f"{s['teacher_latency_ms']:.3f} ms per test batch ({s['speedup']:.1f}x faster)."
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Optional[Path]:
    """Test accuracy against temperature, one line per alpha; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list[Row]] = defaultdict(list)
    for row in summary["rows"]:
        if row["setting"][0] == "distill":
            lines[tuple(row["setting"][1:3])].append(row)
    for (objective, alpha), rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["setting"][3])
        ax.errorbar(
            [r["setting"][3] for r in rows],
            [r["test_acc_mean"] for r in rows],
            yerr=[r["test_acc_std"] for r in rows],
            marker="o",
            capsize=3,
            label=f"DKD, beta={alpha:g}"
            if objective == "dkd"
            else f"distilled, alpha={alpha:g}" + (" (mse)" if objective == "mse" else ""),
        )
    for row, style in (
        (r, s) for r in summary["rows"] for k, s in (("student", "--"), ("teacher", ":")) if r["setting"][0] == k
    ):
        ax.axhline(
            row["test_acc_mean"], color="gray" if style == "--" else "black", linestyle=style, label=row["label"]
        )
        if row["test_acc_std"] > 0:
            ax.axhspan(
                row["test_acc_mean"] - row["test_acc_std"],
                row["test_acc_mean"] + row["test_acc_std"],
                color="gray",
                alpha=0.15,
            )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_title("Student test accuracy against distillation temperature")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="kd-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder written by kd-train -m")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"not a folder: {args.sweep_dir}")
    runs = collect_runs(args.sweep_dir)
    if not runs:
        parser.error(f"no {METRICS_FILE} found below {args.sweep_dir}: is it a kd-train output folder?")
    try:
        summary = summarise(runs)
    except ValueError as error:
        parser.error(str(error))
    table = format_table(summary)
    print(table)
    atomic_write(args.sweep_dir / "report.md", lambda tmp: tmp.write_text(table + "\n"))
    save_json(args.sweep_dir / "report.json", summary)
    image = plot(summary, args.sweep_dir / PLOT_FILE)
    print(f"\nWrote {args.sweep_dir / 'report.md'}, {args.sweep_dir / 'report.json'}", end="")
    print(f" and {image}." if image else ". Install matplotlib for the plot.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
