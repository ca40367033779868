"""Trained teachers (weights) and teacher outputs (logits) are never called by one name."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).parents[1]
OLD_NAMES = re.compile(r"\b(teacher_cache|cache_teacher|TeacherCacheMismatchError)\b")


def test_no_file_uses_the_ambiguous_teacher_cache_names():
    files = [REPO / "README.md", REPO / "Makefile", *(REPO / "benchmarks").glob("*.*")]
    for folder in ("src", "notebooks", "tests"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in {".py", ".yaml", ".ipynb", ".md"}]
    found = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in files
        if path != Path(__file__)
        for match in OLD_NAMES.finditer(path.read_text(errors="ignore"))
    ]
    assert not found, found


def test_cached_teacher_outputs_go_to_their_own_folder(tmp_path):
    from kd_testing import compose_train

    cfg = compose_train(tmp_path, "distill/teacher_outputs=cached")
    assert cfg.distill.teacher_outputs.dirpath.endswith("/teacher_outputs")
