"""The notebooks are committed clean, and their plots are labelled (`make test` executes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert [path.stem for path in NOTEBOOKS] == [
        "01_temperature",
        "02_distill_in_your_own_code",
        "03_choosing_temperature",
        "04_language_models",
        "05_distilling_text",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; strip them (e.g. nbstripout {path.name})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_that_make_a_figure_set_a_title_axis_labels_and_a_legend(path):
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if "plt.subplots(" in source:
            for call in ("set_title(", "set_xlabel(", "set_ylabel(", "legend("):
                assert call in source, f"{path.name}: a figure without {call[:-1]}:\n{source[:200]}"
