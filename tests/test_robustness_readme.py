"""Every number in the tables of results/robustness/README.md is the mean over a method's cells (or, for
"(per seed)" columns, each cell's value in seed order) in the committed ``results/robustness/<task>/runs.csv``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "results" / "robustness"
#: README column (its start) -> runs.csv column, format
COLUMNS = [
    ("UA ↑", "ua", "{:.3f}"),
    ("retain acc ↑", "retain_acc", "{:.3f}"),
    ("UA, worst over samplers ↑", "ua_sweep_min", "{:.3f}"),
    ("UA, worst completion ↑", "ua_completion_min", "{:.3f}"),
    ("UA, null-class completion from 0.3T ↑", "ua_complete_null_0.3", "{:.3f}"),
    ("UA, completion of ", "ua_complete_forget_0.3", "{:.3f}"),
    ("UA after embedding attack ↑", "ua_embed_attack", "{:.3f}"),
    ("UA of the plain caption", "ua_prompt_before", "{:.3f}"),
    ("UA after prompt attack ↑", "ua_prompt_attack", "{:.3f}"),
    ("relearn steps", "relearn_steps", "{:.0f}"),
]


def _sections() -> dict[str, str]:
    text = (FOLDER / "README.md").read_text()
    parts = re.split(r"^## `([\w-]+)`\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _fmt(value: float, fmt: str) -> str:
    return "n/a" if value is None or math.isnan(value) else fmt.format(value)


def test_every_task_folder_has_its_section():
    folders = {p.name for p in FOLDER.iterdir() if (p / "runs.csv").is_file()}
    assert folders and folders == set(_sections())


@pytest.mark.parametrize("task", sorted(_sections()))
def test_the_quoted_table_is_the_committed_runs(task):
    lines = [ln for ln in _sections()[task].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    runs = pd.read_csv(FOLDER / task / "runs.csv").sort_values("seed")
    checked = 0
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows = runs[runs["method"] == cells["method"]]
        assert len(rows), f"{task}: no cells of {cells['method']}"
        for name, quoted in cells.items():
            if name == "method":
                continue
            column, fmt = next((col, f) for start, col, f in COLUMNS if name.startswith(start))
            values = rows[column].astype(float)
            expected = (", ".join(_fmt(v, fmt) for v in values) if name.endswith("(per seed)") and values.notna().all()
                        else _fmt(values.mean(), fmt))
            assert quoted == expected, f"{task}, {cells['method']}, {name}: README {quoted}, runs.csv {expected}"
            checked += 1
    assert checked >= 5 * len(lines[2:])
