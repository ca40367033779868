"""``kd-report``: aggregate the runs of a sweep into a table of mean ± std, and a plot.

Usage::

    kd-report multirun/2026-11-28/10-00-00

Reads every ``metrics.json`` that ``kd-train`` wrote below the folder, groups the runs by
setting (teacher, scratch student, distillation at each temperature, alpha and objective),
chooses the best distilled setting by the monitored metric in its direction (``monitor`` and
``monitor_mode`` of the runs: the highest ``val/acc``, the lowest ``val/loss``), prints a
table, writes ``report.md`` and ``report.json`` beside the runs, and, when matplotlib is
installed, plots the test score against temperature (one line per alpha, with the scratch
student and the teacher as reference levels) into ``accuracy_vs_temperature.png`` when the
sweep varies the temperature, or as bars with error bars into ``scores.png`` otherwise. Runs
are reported by their ``score`` (test accuracy, or test perplexity for language models), and
samples of generated text are shown when the runs recorded them.
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
BAR_PLOT_FILE = "scores.png"


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


def score_of(runs: list[dict]) -> Monitor:
    """The test metric the runs are reported by (``score`` in ``metrics.json``): ``test/acc`` (max) by default."""
    found = {Monitor(r["score"]["name"], r["score"]["mode"]) for r in runs if "score" in r}
    if len(found) > 1:
        raise ValueError("the runs report different test metrics: " + ", ".join(m.name for m in sorted(found)))
    return found.pop() if found else Monitor("test/acc", "max")


class Row(dict):
    """One setting: ``label``, ``n``, and mean/std of the test score and of the monitored metric."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # e.g. teachers known only from distillation runs: no monitor
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


DIVERGENCE_NAMES = {"reverse_kl": "reverse KL", "tvd": "TVD"}
METHOD_OPTIONS = {"sequence_level": "sequence-level", "on_policy": "on-policy"}  # how the training text is made


def _variant(d: dict) -> str:
    """What sets a distillation apart beyond T and alpha: divergence, top-k teacher, generated text."""
    parts = []
    divergence = d.get("divergence", "forward_kl")
    if divergence == "jsd":
        parts.append(f"JSD({float(d.get('beta', 0.5)):g})")
    elif divergence != "forward_kl":
        parts.append(DIVERGENCE_NAMES.get(divergence, divergence))
    if d.get("standardize"):
        parts.append("logit standardisation")
    if _top_k_teacher(d):
        parts.append(_top_k_teacher(d))
    if d.get("sequence_level"):
        parts.append("sequence-level")
    if d.get("on_policy"):
        parts.append(f"on-policy {float(d['on_policy']['fraction']):g}")
    for kind, weights in _feature_kinds(d).items():
        parts.append(f"{kind} x{'/'.join(f'{w:g}' for w in weights)}")
    return ", ".join(parts)


def _top_k_teacher(d: dict) -> str:
    """``"top-32 teacher"`` for a distillation from a top-k store of teacher outputs, else ``""``."""
    outputs = str(d.get("teacher_outputs", ""))
    return outputs.removeprefix("cached ") + " teacher" if outputs.startswith("cached top-") else ""


def _feature_kinds(d: dict) -> dict[str, list[float]]:
    """The intermediate-feature terms of a distillation, by kind, with their weights."""
    kinds: dict[str, list[float]] = {}
    for pair in d.get("feature_pairs") or []:
        kind = "attention transfer" if pair.get("loss") == "attention" else "FitNets hints"
        kinds.setdefault(kind, []).append(float(pair.get("weight", 1.0)))
    return kinds


def _method(d: dict) -> str:
    """The method of a distillation, whatever its hyperparameters: ``KD``, ``DKD``, ``FitNets hints + KD``..."""
    objective = d.get("objective", "kl")
    name = {"dkd": "DKD", "mse": "logit matching"}.get(objective, "KD")
    divergence = d.get("divergence", "forward_kl")
    if objective == "kl" and divergence != "forward_kl":
        name += f" ({DIVERGENCE_NAMES.get(divergence, divergence.upper())})"
    if d.get("standardize"):
        name += " + logit standardisation"
    if _top_k_teacher(d):
        name += ", " + _top_k_teacher(d)
    name += "".join(f", {label}" for key, label in METHOD_OPTIONS.items() if d.get(key))
    kinds = list(_feature_kinds(d))
    return " + ".join([*kinds, name]) if kinds else name


def _setting(run: dict) -> tuple:
    """What a run's group is: its stage and hyperparameters, the student's name, and the method."""
    student = run.get("student_name", "")
    if run["stage"] == "distill":
        d = run["distill"]
        method = _method(d)
        if d.get("objective") == "dkd":  # its weight of note is beta_nckd; it has no alpha
            return ("distill", "dkd", float(d["beta_nckd"]), float(d["temperature"]), _variant(d), student, method)
        weight, temperature = float(d["alpha"]), float(d["temperature"])
        return ("distill", d.get("objective", "kl"), weight, temperature, _variant(d), student, method)
    return (run["stage"],) if run["stage"] == "teacher" else (run["stage"], student)


def _student_of(setting: tuple) -> str:
    """The student's name in a setting of :func:`_setting` (``""`` for the teacher and unnamed runs)."""
    if setting[0] == "teacher":
        return ""
    return setting[-1] if setting[0] == "student" else setting[-2]


def _label(setting: tuple, named: bool = False) -> str:
    """The row's name; ``named`` puts the student's name first (a sweep over several students)."""
    prefix = f"{_student_of(setting)}: " if named and setting[0] != "teacher" else ""
    if setting[0] == "distill":
        _, objective, weight, temperature, variant, _, _ = setting
        if objective == "dkd":
            return f"{prefix}DKD (T={temperature:g}, beta={weight:g}{', ' + variant if variant else ''})"
        details = [f"T={temperature:g}", f"alpha={weight:g}"] + (["mse"] if objective == "mse" else [])
        return f"{prefix}distilled{', ' + variant if variant else ''} ({', '.join(details)})"
    return prefix + {"student": "scratch student", "teacher": "teacher"}[setting[0]]


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Group the runs by setting and compute mean ± std over seeds."""
    score = score_of(runs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[_setting(run)].append(run)
    # Teachers used by distillation runs, each counted once (a cached teacher serves many runs).
    teachers = {run["teacher"]["source"]: run["teacher"] for run in runs if "teacher" in run}
    if ("teacher",) not in groups and teachers:
        groups[("teacher",)] = [
            {"test": {score.name: t[score.name]}, "monitor": {"value": t.get("monitor", math.nan)}}
            for t in teachers.values()
        ]

    rows = []
    named = len({_student_of(s) for s in groups if s[0] != "teacher"}) > 1
    order = {"teacher": 0, "student": 1, "distill": 2}

    def sort_key(setting: tuple) -> tuple:
        hyperparameters = setting[1:5] if setting[0] == "distill" else ()
        return (setting[0] != "teacher", _student_of(setting), order[setting[0]], hyperparameters)

    for setting in sorted(groups, key=sort_key):
        members = groups[setting]
        test_mean, test_std = _mean_std([m["test"][score.name] for m in members])
        mon_mean, mon_std = _mean_std([m["monitor"]["value"] for m in members])
        rows.append(
            Row(
                label=_label(setting, named),
                setting=list(setting),
                n=len(members),
                seeds=sorted(m["seed"] for m in members if "seed" in m),
                test_mean=test_mean,
                test_std=test_std,
                monitor_mean=mon_mean,
                monitor_std=mon_std,
                seconds=_mean_std([m["seconds"] for m in members])[0] if all("seconds" in m for m in members) else None,
            )
        )
    monitor = monitor_of(runs)
    summary: dict[str, Any] = {"rows": rows, "monitor": monitor._asdict(), "score": score._asdict()}
    distilled = [r for r in rows if r["setting"][0] == "distill"]
    scratch = next((r for r in rows if r["setting"][0] == "student"), None)
    if distilled and scratch and not named:
        best = _best_by_validation(distilled, monitor)
        summary["comparison"] = {"best_distilled_by_validation": best["label"], **_verdict(best, scratch, score)}
    methods = _methods(rows, monitor, score)
    distilled_methods = [m for m in methods if m["method"] != "scratch"]
    # Only where it says more than the rows: each method chosen from a grid, or several students.
    if len(distilled_methods) > 1 and (named or any(m["settings_tried"] > 1 for m in distilled_methods)):
        summary["methods"] = methods
    by_student: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if "latency_ms" in run:
            by_student[run.get("student_name", "")].append(run)
    sizes = {name: _size(sized) for name, sized in sorted(by_student.items())}
    if sizes:
        summary["size"] = next(iter(sizes.values()))
    if len(sizes) > 1:
        summary["sizes"] = sizes
    summary["samples"] = _samples(runs, groups)
    return summary


def _size(sized: list[dict]) -> dict[str, float]:
    """Parameters and median forward latency of one student and the teacher, from distillation runs."""
    student, teacher = sized[0]["params"]["student"], sized[0]["params"]["teacher"]
    latency = {k: statistics.median(r["latency_ms"][k] for r in sized) for k in ("student", "teacher")}
    return {
        "student_params": student,
        "teacher_params": teacher,
        "size_ratio": student / teacher,
        "student_latency_ms": latency["student"],
        "teacher_latency_ms": latency["teacher"],
        "speedup": latency["teacher"] / latency["student"],
    }


def _best_by_validation(rows: list[Row], monitor: Monitor) -> Row:
    """The row with the best mean of the monitored metric: chosen on validation, never on test."""
    return (max if monitor.mode == "max" else min)(rows, key=lambda r: r["monitor_mean"])


def _verdict(best: Row, scratch: Row, score: Monitor) -> dict[str, Any]:
    """The gain of ``best`` over the scratch student, and whether it exceeds 2 x the larger std."""
    gain = best["test_mean"] - scratch["test_mean"]
    if score.mode == "min":
        gain = -gain  # a lower perplexity is the gain
    threshold = 2 * max(best["test_std"], scratch["test_std"])
    return {"gain": gain, "two_max_std": threshold, "significant": gain > threshold}


def _methods(rows: list[Row], monitor: Monitor, score: Monitor) -> list[dict[str, Any]]:
    """Per student and method, the setting chosen on validation against that student's scratch runs.

    ``seconds`` is the mean time of one run of the chosen setting; ``total_seconds`` the time of
    every run of the method (its whole grid and all seeds), what choosing it cost.
    """
    found = []
    for scratch in (r for r in rows if r["setting"][0] == "student"):
        student = _student_of(scratch["setting"])
        by_method: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            if row["setting"][0] == "distill" and _student_of(row["setting"]) == student:
                by_method[row["setting"][-1]].append(row)
        student = student or "student"  # runs from before the name was recorded
        found.append({"student": student, "method": "scratch", **_method_entry(scratch, [scratch])})
        for method, candidates in sorted(by_method.items()):
            best = _best_by_validation(candidates, monitor)
            entry = {"student": student, "method": method, **_method_entry(best, candidates)}
            chosen = best["label"].removeprefix(f"{student}: ")
            found.append({**entry, "chosen": chosen, **_verdict(best, scratch, score)})
    return found


def _method_entry(best: Row, candidates: list[Row]) -> dict[str, Any]:
    timed = all(r.get("seconds") is not None for r in candidates)
    return {
        "n": best["n"],
        "settings_tried": len(candidates),
        "test_mean": best["test_mean"],
        "test_std": best["test_std"],
        "seconds": best.get("seconds"),
        "total_seconds": sum(r["seconds"] * r["n"] for r in candidates) if timed else None,
    }


def _samples(runs: list[dict], groups: dict[tuple, list[dict]]) -> list[dict[str, str]]:
    """Text sampled by the teacher, the scratch student and each distilled setting, at the lowest seed."""
    found: list[dict[str, str]] = []
    for setting, members in sorted(groups.items(), key=lambda item: str(item[0])):
        sampled = sorted((m for m in members if "samples" in m), key=lambda m: m.get("seed", 0))
        if not sampled:
            continue
        first = sampled[0]
        if not found:
            found.append({"label": "prompt", "text": first["samples"]["prompt"]})
            if "teacher" in first["samples"]:
                found.append({"label": "teacher", "text": first["samples"]["teacher"]})
        text = first["samples"].get("student")
        if text is not None:
            found.append({"label": f"{_label(setting)}, seed {first.get('seed')}", "text": text})
    return found


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, with the comparison, size and samples below it."""
    monitor = Monitor(**summary.get("monitor", {"name": "val/acc", "mode": "max"}))
    score = Monitor(**summary.get("score", {"name": "test/acc", "mode": "max"}))
    direction = "higher is better" if monitor.mode == "max" else "lower is better"
    score_direction = "higher is better" if score.mode == "max" else "lower is better"
    timed = any(row.get("seconds") is not None for row in summary["rows"])
    lines = [
        f"| setting | runs | {score.name} (mean ± std, {score_direction}) | {monitor.name} (mean ± std, {direction}) |"
        + (" seconds per run |" if timed else ""),
        "|---|---|---|---|" + ("---|" if timed else ""),
    ]
    for row in summary["rows"]:
        val = "" if math.isnan(row["monitor_mean"]) else f"{row['monitor_mean']:.4f} ± {row['monitor_std']:.4f}"
        line = f"| {row['label']} | {row['n']} | {row['test_mean']:.4f} ± {row['test_std']:.4f} | {val} |"
        if timed:
            line += f" {row['seconds']:.0f} |" if row.get("seconds") is not None else " |"
        lines.append(line)
    if "comparison" in summary:
        c = summary["comparison"]
        verdict = "a real gain" if c["significant"] else "NOT a significant gain"
        if score.name.endswith("acc"):
            change = f"{c['gain'] * 100:+.2f} points of test accuracy over the scratch student"
            unit = f"{c['two_max_std'] * 100:.2f} points"
        else:  # a gain is a decrease
            side = "lower" if c["gain"] >= 0 else "higher"
            change = f"{score.name} {abs(c['gain']):.2f} {side} than the scratch student's"
            unit = f"{c['two_max_std']:.2f}"
        lines.append(
            f"\nBest distilled setting (chosen on {monitor.name}, {direction}): {c['best_distilled_by_validation']}: "
            f"{change}; 2 x the larger std = {unit}: {verdict}."
        )
    if "methods" in summary:
        lines.append(_methods_table(summary["methods"], monitor, score))
    for name, s in (summary.get("sizes") or {"": summary["size"]} if "size" in summary else {}).items():
        lines.append(
            f"Student{' ' + name if name else ''}: {s['student_params']:,} parameters, {s['size_ratio'] * 100:.2f}% "
            f"of the teacher's {s['teacher_params']:,}; forward pass {s['student_latency_ms']:.3f} ms vs "
            f"{s['teacher_latency_ms']:.3f} ms per test batch ({s['speedup']:.1f}x faster)."
        )
    if summary.get("samples"):
        lines.append("\nSamples (the same prompt, seed and sampling settings for every model):")
        lines.extend(f"- **{sample['label']}**: {_one_line(sample['text'])}" for sample in summary["samples"])
    return "\n".join(lines)


def _methods_table(methods: list[dict[str, Any]], monitor: Monitor, score: Monitor) -> str:
    """Each method at its setting chosen on validation, with its verdict against the scratch student."""
    direction = "higher is better" if monitor.mode == "max" else "lower is better"
    accuracy = score.name.endswith("acc")
    lines = [
        f"\nEach method at its best setting, chosen on {monitor.name} ({direction}); the verdict compares its "
        f"{score.name} with the same student's from scratch (a real gain exceeds 2 x the larger std):\n",
        f"| student | method | chosen setting | runs | {score.name} (mean ± std) | gain | 2 x larger std | verdict "
        "| seconds per run | seconds, all runs of the method |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    scale, unit = (100, " points") if accuracy else (1, "")
    for m in methods:
        if m["method"] == "scratch":
            gain = threshold = verdict = ""
        else:
            gain, threshold = f"{m['gain'] * scale:+.2f}{unit}", f"{m['two_max_std'] * scale:.2f}{unit}"
            verdict = "real gain" if m["significant"] else ("not significant" if m["gain"] > 0 else "no gain")
        seconds = "" if m["seconds"] is None else f"{m['seconds']:.0f}"
        total = "" if m["total_seconds"] is None else f"{m['total_seconds']:.0f}"
        tried = f" (best of {m['settings_tried']})" if m["settings_tried"] > 1 else ""
        lines.append(
            f"| {m['student']} | {m['method']} | {m.get('chosen', '')}{tried} | {m['n']} | "
            f"{m['test_mean']:.4f} ± {m['test_std']:.4f} | {gain} | {threshold} | {verdict} | {seconds} | {total} |"
        )
    return "\n".join(lines)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " / ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def plot(summary: dict[str, Any], root: Path) -> Optional[Path]:
    """Plot the test score: against temperature when the sweep varies it (one line per setting),
    else as bars with error bars, one per setting. ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    score = Monitor(**summary.get("score", {"name": "test/acc", "mode": "max"}))
    distilled = [r for r in summary["rows"] if r["setting"][0] == "distill"]
    temperatures = {r["setting"][3] for r in distilled}
    if "methods" in summary:  # one bar per method and student, at the setting chosen on validation
        teacher = [r for r in summary["rows"] if r["setting"][0] == "teacher"]
        bars = [_Bar(r["label"], r["test_mean"], r["test_std"], "black") for r in teacher]
        for m in summary["methods"]:
            color = "gray" if m["method"] == "scratch" else "C0"
            bars.append(_Bar(f"{m['student']}: {m['method']}", m["test_mean"], m["test_std"], color))
        fig, path = _plot_bars(plt, bars, score), root / BAR_PLOT_FILE
    elif len(temperatures) > 1:
        fig, path = _plot_against_temperature(plt, summary, distilled, score), root / PLOT_FILE
    else:
        colors = {"teacher": "black", "student": "gray", "distill": "C0"}
        bars = [_Bar(r["label"], r["test_mean"], r["test_std"], colors[r["setting"][0]]) for r in summary["rows"]]
        fig, path = _plot_bars(plt, bars, score), root / BAR_PLOT_FILE
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


class _Bar(NamedTuple):
    label: str
    mean: float
    std: float
    color: str


def _plot_bars(plt: Any, bars: list[_Bar], score: Monitor) -> Any:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.5))
    positions = list(range(len(bars)))[::-1]
    ax.barh(positions, [b.mean for b in bars], xerr=[b.std for b in bars], color=[b.color for b in bars], capsize=3)
    ax.set_yticks(positions, [b.label for b in bars], fontsize=8)
    low, high = min(b.mean - b.std for b in bars), max(b.mean + b.std for b in bars)
    ax.set_xlim(max(0.0, low - 0.1 * (high - low + 1e-9)), high + 0.05 * (high - low + 1e-9))
    better = "higher" if score.mode == "max" else "lower"
    ax.set_xlabel(f"{score.name} (mean ± std over seeds, {better} is better)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def _plot_against_temperature(plt: Any, summary: dict[str, Any], distilled: list[Row], score: Monitor) -> Any:
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list[Row]] = defaultdict(list)
    for row in distilled:
        lines[(row["setting"][1], row["setting"][2], row["setting"][4])].append(row)
    for (objective, weight, variant), rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["setting"][3])
        name = f"DKD, beta={weight:g}" if objective == "dkd" else f"distilled, alpha={weight:g}"
        extras = [e for e in ("mse" if objective == "mse" else "", variant) if e]
        ax.errorbar(
            [r["setting"][3] for r in rows],
            [r["test_mean"] for r in rows],
            yerr=[r["test_std"] for r in rows],
            marker="o",
            capsize=3,
            label=name + (f" ({', '.join(extras)})" if extras else ""),
        )
    for row in summary["rows"]:
        if row["setting"][0] not in ("student", "teacher"):
            continue
        dashed = row["setting"][0] == "student"
        ax.axhline(
            row["test_mean"], color="gray" if dashed else "black", linestyle="--" if dashed else ":", label=row["label"]
        )
        if row["test_std"] > 0:
            ax.axhspan(row["test_mean"] - row["test_std"], row["test_mean"] + row["test_std"], color="gray", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_title(f"Student {score.name} against distillation temperature")
    ax.set_xlabel("temperature T")
    ax.set_ylabel(f"{score.name} (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


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
    image = plot(summary, args.sweep_dir)
    print(f"\nWrote {args.sweep_dir / 'report.md'}, {args.sweep_dir / 'report.json'}", end="")
    print(f" and {image}." if image else ". Install matplotlib for the plot.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
