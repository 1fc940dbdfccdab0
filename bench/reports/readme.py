"""The README's quoted result tables, written from the committed ``results/<task>/table.csv``.

A quoted table sits between ``<!-- table: <task> -->`` and ``<!-- end table -->``; its header row names the
columns (see :data:`COLUMNS`) and this module writes one row per row of the task's table, in its order, so the
README never quotes a number the results folder does not hold. ``python -m bench.reports.readme README.md``
rewrites the blocks in place (``--check``: exit 1 when they differ from the tables).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

#: README column -> (table.csv column, format)
COLUMNS = {
    "UA ↑": ("ua_mean", "{:.3f}"),
    "retain acc ↑": ("retain_acc_mean", "{:.3f}"),
    "FID ↓": ("fid_mean", "{:.2f}"),
    "time (s) ↓": ("unlearn_s_mean", "{:.1f}"),
    "time to UA ≥ 0.9 (s) ↓": ("time_to_target_s_mean", "{:.1f}"),
    "iters to UA ≥ 0.9 ↓": ("time_to_target_iters_mean", "{:.0f}"),
    "NFE": ("nfe_mean", "{:.0f}"),
}
BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- end table -->)", flags=re.S)


def _cell(value, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def table_block(header: list[str], table: pd.DataFrame) -> str:
    """The Markdown rows of ``table`` (a ``table.csv``) under ``header`` (``method`` then :data:`COLUMNS` names)."""
    unknown = [h for h in header[1:] if h not in COLUMNS]
    if header[0] != "method" or unknown:
        raise ValueError(f"a quoted table starts with 'method' and uses only {', '.join(COLUMNS)}; got {header}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["label"])] + [_cell(row[COLUMNS[h][0]], COLUMNS[h][1]) for h in header[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fill_tables(text: str, results: Path) -> str:
    """``text`` with every quoted table rewritten from ``results/<task>/table.csv``."""
    def one(m: re.Match) -> str:
        first = next(ln for ln in m.group(3).splitlines() if ln.startswith("|"))
        header = [c.strip() for c in first.strip().strip("|").split("|")]
        table = pd.read_csv(results / m.group(2) / "table.csv")
        return m.group(1) + table_block(header, table) + m.group(4)
    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reports.readme", description=__doc__.splitlines()[0])
    p.add_argument("readme", type=Path)
    p.add_argument("--results", type=Path, help="results folder (default: results/ beside the README)")
    p.add_argument("--check", action="store_true", help="exit 1 when a quoted table differs from its table.csv")
    a = p.parse_args(argv)
    text = a.readme.read_text()
    new = fill_tables(text, a.results or a.readme.parent / "results")
    if a.check:
        print("quoted tables match" if new == text else f"{a.readme}: quoted tables differ from the results")
        return int(new != text)
    a.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
