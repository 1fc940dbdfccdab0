"""``bench table`` says when a folder's cells were made by other harness or method code than the installed one
(bench/reports/currency.py), and leaves the written files alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from bench.cli import main
from bench.core.codever import harness_version, method_version
from bench.method import METHODS
from bench.reports import stale_code_warnings

ROOT = Path(__file__).resolve().parents[1]


def test_only_cells_of_other_code_are_named():
    ga, salun = method_version(METHODS.get("ga")), method_version(METHODS.get("salun"))
    df = pd.DataFrame({"method": ["ga", "ga", "salun", "gone"],
                       "harness_code": ["h" * 12, "old000000000", "h" * 12, "h" * 12],
                       "method_code": [ga, ga, "0ldsalun0000", "x"]})
    lines = stale_code_warnings(df, installed="h" * 12)
    assert lines[0].startswith("1 of 4 cells were made by other harness code than the installed hhhhhh: "
                               "old000 (1 cell);")
    # ga's cells are its installed code
    assert lines[1].startswith(f"cells made by other method code than the installed: salun 1 of 1 (0ldsal (1 cell); "
                               f"installed {salun[:6]});")
    assert lines[2] == "not methods of this installation, so their cells cannot be remade here: gone (1 cell)"
    assert len(lines) == 3
    current = df.iloc[[0]]
    assert stale_code_warnings(current, installed="h" * 12) == []
    assert stale_code_warnings(current.assign(harness_code=harness_version())) == []


def test_bench_table_warns_on_stderr_about_old_cells(tmp_path, capsys):
    folder = tmp_path / "cifar10-class"
    shutil.copytree(ROOT / "results" / "cifar10-class" / "runs", folder / "runs")
    for row in folder.glob("runs/*/row.json"):
        cell = json.loads(row.read_text())
        cell["harness_code"] = "feedfacecafe"
        row.write_text(json.dumps(cell))
    assert main(["table", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert "feedfa" not in out and "feedfa" not in (folder / "table.md").read_text()
    assert f"2 of 2 cells were made by other harness code than the installed {harness_version()[:6]}: " \
           "feedfa (2 cells)" in err
