"""kd-report's aggregation on runs with known numbers."""

from __future__ import annotations

import json
import statistics

import pytest

from lightning_kd.app.report import collect_runs, format_table, main, summarise


def write_run(folder, stage, seed, acc, val, monitor=("val/acc", "max"), **extra):
    folder.mkdir(parents=True)
    name, mode = monitor
    run = {"stage": stage, "seed": seed, "test": {"test/acc": acc}, "monitor": {"name": name, "value": val}}
    if mode is not None:
        run["monitor"]["mode"] = mode
    run.update(extra)
    (folder / "metrics.json").write_text(json.dumps(run))


def distill_extra(temperature, alpha):
    return {
        "distill": {"temperature": temperature, "alpha": alpha, "objective": "kl"},
        "teacher": {"source": "/cache/teacher.pt", "test/acc": 0.95},
        "params": {"student": 100, "teacher": 10000},
        "latency_ms": {"student": 0.5, "teacher": 5.0},
    }


@pytest.fixture
def sweep(tmp_path):
    scratch = [0.80, 0.82, 0.81]
    t2 = [0.88, 0.90, 0.89]
    t8 = [0.84, 0.80, 0.82]
    for i, acc in enumerate(scratch):
        write_run(tmp_path / f"s{i}", "student", i, acc, acc)
    for i, acc in enumerate(t2):
        write_run(tmp_path / f"a{i}", "distill", i, acc, acc + 0.01, **distill_extra(2.0, 0.9))
    for i, acc in enumerate(t8):
        write_run(tmp_path / f"b{i}", "distill", i, acc, acc - 0.05, **distill_extra(8.0, 0.9))
    # A teacher trained inside a distillation run is not a run of the sweep.
    write_run(tmp_path / "a0" / "teacher", "teacher", 0, 0.5, 0.5)
    return tmp_path, scratch, t2


def test_groups_by_setting_with_mean_and_std(sweep):
    root, scratch, t2 = sweep
    runs = collect_runs(root)
    assert len(runs) == 9
    summary = summarise(runs)
    rows = {row["label"]: row for row in summary["rows"]}
    assert list(rows) == ["teacher", "scratch student", "distilled (T=2, alpha=0.9)", "distilled (T=8, alpha=0.9)"]
    assert rows["teacher"]["n"] == 1 and rows["teacher"]["test_mean"] == 0.95
    assert rows["scratch student"]["test_mean"] == pytest.approx(statistics.fmean(scratch))
    assert rows["distilled (T=2, alpha=0.9)"]["test_std"] == pytest.approx(statistics.stdev(t2))
    comparison = summary["comparison"]
    assert comparison["best_distilled_by_validation"] == "distilled (T=2, alpha=0.9)"
    assert comparison["gain"] == pytest.approx(0.08)
    assert comparison["two_max_std"] == pytest.approx(0.02) and comparison["significant"]
    assert summary["size"]["size_ratio"] == 0.01 and summary["size"]["speedup"] == 10.0


def test_a_gain_within_the_noise_is_reported_as_such(tmp_path):
    for i, acc in enumerate([0.80, 0.84]):
        write_run(tmp_path / f"s{i}", "student", i, acc, acc)
    for i, acc in enumerate([0.83, 0.85]):
        write_run(tmp_path / f"d{i}", "distill", i, acc, acc, **distill_extra(4.0, 0.5))
    summary = summarise(collect_runs(tmp_path))
    assert not summary["comparison"]["significant"]
    assert "NOT a significant gain" in format_table(summary)


def test_main_writes_the_report_files(sweep, capsys):
    root, _, _ = sweep
    assert main([str(root)]) == 0
    assert "| scratch student | 3 | 0.8100 ± 0.0100 |" in capsys.readouterr().out
    assert json.loads((root / "report.json").read_text())["comparison"]["significant"]
    assert (root / "report.md").read_text().startswith("| setting |")
    assert (root / "accuracy_vs_temperature.png").read_bytes()[:4] == b"\x89PNG"


def test_a_minimised_monitor_selects_the_lowest_and_labels_the_table_by_its_name(tmp_path, capsys):
    """With monitor=val/loss monitor_mode=min the best setting is the one with the LOWEST loss."""
    for i in range(2):
        write_run(tmp_path / f"s{i}", "student", i, 0.80, 0.60, monitor=("val/loss", "min"))
        write_run(tmp_path / f"a{i}", "distill", i, 0.90, 0.30, ("val/loss", "min"), **distill_extra(2.0, 0.9))
        write_run(tmp_path / f"b{i}", "distill", i, 0.70, 0.90, ("val/loss", "min"), **distill_extra(8.0, 0.9))
    summary = summarise(collect_runs(tmp_path))
    assert summary["monitor"] == {"name": "val/loss", "mode": "min"}
    assert summary["comparison"]["best_distilled_by_validation"] == "distilled (T=2, alpha=0.9)"
    assert summary["comparison"]["gain"] == pytest.approx(0.10)
    table = format_table(summary)
    assert "| val/loss (mean ± std, lower is better) |" in table
    assert "chosen on val/loss, lower is better" in table and "val accuracy" not in table


def test_records_without_a_mode_are_read_as_the_old_val_acc_default(tmp_path):
    write_run(tmp_path / "s", "student", 0, 0.80, 0.80, monitor=("val/acc", None))
    write_run(tmp_path / "a", "distill", 0, 0.90, 0.90, ("val/acc", None), **distill_extra(2.0, 0.9))
    write_run(tmp_path / "b", "distill", 0, 0.70, 0.95, ("val/acc", None), **distill_extra(8.0, 0.9))
    summary = summarise(collect_runs(tmp_path))
    assert summary["comparison"]["best_distilled_by_validation"] == "distilled (T=8, alpha=0.9)"


@pytest.mark.parametrize(
    ("monitors", "message"),
    [
        ([("val/acc", "max"), ("val/loss", "min")], "selected by different monitors"),
        ([("val/loss", None), ("val/loss", None)], "without its mode"),
    ],
)
def test_runs_that_cannot_be_compared_are_refused(tmp_path, capsys, monitors, message):
    for i, monitor in enumerate(monitors):
        write_run(tmp_path / f"s{i}", "student", i, 0.8, 0.8, monitor=monitor)
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert message in capsys.readouterr().err


def test_perplexity_is_reported_lower_is_better_with_a_bar_chart(tmp_path, capsys):
    score = {"name": "test/ppl", "mode": "min"}
    for i, ppl in enumerate([300.0, 310.0, 320.0]):
        write_run(tmp_path / f"s{i}", "student", i, 0.0, ppl, monitor=("val/ppl", "min"), score=score)
    for i, ppl in enumerate([250.0, 255.0, 260.0]):
        extra = {**distill_extra(1.0, 0.5), "score": score, "teacher": {"source": "t.pt", "test/ppl": 100.0}}
        extra["distill"]["divergence"] = "reverse_kl"
        write_run(tmp_path / f"d{i}", "distill", i, 0.0, ppl, monitor=("val/ppl", "min"), **extra)
    for run in tmp_path.glob("*/metrics.json"):  # the test score is perplexity here
        data = json.loads(run.read_text())
        data["test"] = {"test/ppl": data["monitor"]["value"] + 5}
        run.write_text(json.dumps(data))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| setting | runs | test/ppl (mean ± std, lower is better) | val/ppl (mean ± std, lower is better) |" in out
    assert "| teacher | 1 | 100.0000 ± 0.0000 |" in out
    assert "distilled, reverse KL (T=1, alpha=0.5): test/ppl 55.00 lower than the scratch student's" in out
    assert "2 x the larger std = 20.00: a real gain" in out
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "accuracy_vs_temperature.png").exists()
    assert "Each method at its best setting" not in out  # one setting per method: the rows say it all


def method_run(folder, seed, acc, val, student, seconds, **distill):
    """A run of the methods table: without ``distill`` settings, the scratch student."""
    extra = {"student_name": student, "seconds": seconds}
    stage = "distill" if distill else "student"
    if distill:
        extra.update(distill_extra(distill.pop("temperature", 4.0), distill.pop("alpha", 0.9)))
        extra["distill"].update(distill)
    write_run(folder, stage, seed, acc, val, **extra)


def test_the_methods_table_chooses_each_methods_setting_on_validation_per_student(tmp_path, capsys):
    hints = [{"student": "features.6", "teacher": "features.6", "loss": "mse", "weight": 1.0}]
    for seed in range(3):
        for student, base in (("mlp", 0.80), ("cnn", 0.85)):
            method_run(tmp_path / f"{student}-scratch-{seed}", seed, base + 0.001 * seed, base, student, 10.0)
            # KD: the T=2 setting is better on validation, the T=8 one on test: T=2 is chosen.
            method_run(
                tmp_path / f"{student}-kd2-{seed}", seed, base + 0.02, base + 0.05, student, 20.0, temperature=2.0
            )
            method_run(
                tmp_path / f"{student}-kd8-{seed}", seed, base + 0.04, base + 0.01, student, 20.0, temperature=8.0
            )
            dkd = {"objective": "dkd", "beta_nckd": 8.0, "alpha_tckd": 1.0}
            method_run(tmp_path / f"{student}-dkd-{seed}", seed, base - 0.01 + 0.01 * seed, base, student, 30.0, **dkd)
        method_run(tmp_path / f"cnn-fitnets-{seed}", seed, 0.86, 0.86, "cnn", 60.0, feature_pairs=hints)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "report.json").read_text())
    assert "comparison" not in summary  # one verdict per student and method instead
    methods = {(m["student"], m["method"]): m for m in summary["methods"]}
    assert sorted(methods) == [
        ("cnn", "DKD"), ("cnn", "FitNets hints + KD"), ("cnn", "KD"), ("cnn", "scratch"),
        ("mlp", "DKD"), ("mlp", "KD"), ("mlp", "scratch"),
    ]  # fmt: skip
    kd = methods[("cnn", "KD")]
    assert kd["chosen"] == "distilled (T=2, alpha=0.9)" and kd["settings_tried"] == 2
    assert kd["gain"] == pytest.approx(0.02 - 0.001) and kd["significant"]
    assert kd["seconds"] == 20.0 and kd["total_seconds"] == 120.0  # 2 settings x 3 seeds x 20 s
    dkd = methods[("mlp", "DKD")]
    assert dkd["test_std"] == pytest.approx(0.01) and not dkd["significant"]
    assert "| mlp | DKD | DKD (T=4, beta=8) | 3 | 0.8000 ± 0.0100 | -0.10 points | 2.00 points | no gain |" in out
    assert "| cnn | FitNets hints + KD | distilled, FitNets hints x1 (T=4, alpha=0.9) | 3 |" in out
    assert "Student cnn: 100 parameters, 1.00% of the teacher's 10,000" in out and "Student mlp: 100" in out
    assert "| cnn: scratch student | 3 |" in out and "| mlp: scratch student | 3 |" in out
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_logit_standardisation_is_its_own_method():
    from lightning_kd.app.report import _method

    assert _method({"objective": "kl", "standardize": True}) == "KD + logit standardisation"
    assert _method({"objective": "dkd", "standardize": False}) == "DKD"
    attention = [{"loss": "attention", "weight": 1000.0}, {"loss": "attention", "weight": 1000.0}]
    assert _method({"objective": "kl", "feature_pairs": attention}) == "attention transfer + KD"
    # Language models: the divergence, the top-k store and how the text is made are methods too.
    assert _method({"objective": "kl", "divergence": "jsd", "beta": 0.5}) == "KD (JSD)"
    assert _method({"objective": "kl", "teacher_outputs": "cached top-32"}) == "KD, top-32 teacher"
    assert _method({"objective": "kl", "on_policy": {"fraction": 0.5}}) == "KD, on-policy"
    assert _method({"objective": "kl", "teacher_outputs": "cached", "sequence_level": None}) == "KD"
