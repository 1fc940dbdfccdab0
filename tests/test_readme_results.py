"""The README's result tables are the committed tables: every number in a ``<!-- table: <task> -->`` block
is recomputed here from ``results/<task>/table.csv`` (the means over a row's cells) and must match."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from bench.reports.readme import COLUMNS, fill_tables, main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = dict(re.findall(r"<!-- table: ([\w-]+) -->\n(.*?)<!-- end table -->", README, flags=re.S))


def _fmt(value, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def test_the_readme_quotes_result_tables():
    assert {"digits-class", "sd-digits"} <= set(BLOCKS)


@pytest.mark.parametrize("task", sorted(BLOCKS))
def test_readme_table_equals_the_committed_table(task):
    lines = [ln for ln in BLOCKS[task].strip().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = pd.read_csv(ROOT / "results" / task / "table.csv")
    profile = table["profile"].unique()
    assert len(profile) == 1, f"{task}: one profile per quoted table"
    by_label = {r["label"]: r for _, r in table.iterrows()}
    quoted = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [q[0] for q in quoted] == list(by_label), f"{task}: the README lists other rows than table.csv"
    for cells in quoted:
        row = by_label[cells[0]]
        for name, text in zip(header[1:], cells[1:]):
            column, fmt = COLUMNS[name]
            assert text == _fmt(row[column], fmt), (task, cells[0], name, text, row[column])


def test_the_readme_tables_are_what_the_generator_writes(tmp_path):
    assert fill_tables(README, ROOT / "results") == README
    edited = tmp_path / "README.md"
    changed = README.replace("| original | 0.", "| original | 9.", 1)
    assert changed != README
    edited.write_text(changed)
    assert main([str(edited), "--results", str(ROOT / "results"), "--check"]) == 1
    assert main([str(edited), "--results", str(ROOT / "results")]) == 0
    assert edited.read_text() == README
