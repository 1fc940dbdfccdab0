"""Whether a results folder's cells were made by the code installed now.

Every cell records the hash of the harness code and of its method's code that made it (``bench.core.codever``).
A folder rendered by other code than the installed one still renders, but its numbers are not what this code
gives: the identity rule would not reuse those cells, and a user comparing them with fresh cells compares two
programs. ``bench table`` prints these lines; they stay out of the written files, which must not change with the
code that happens to read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.core.codever import harness_version, method_version
from bench.core.errors import BenchError
from bench.method import METHODS
from bench.reports.format import _strs
from bench.reports.tables import code_counts

REMAKE = "their numbers are not necessarily this code's: remake them (bench run ... --no-resume, or a fresh --out)"


def installed_method_code(method: str) -> str | None:
    """The code hash of the installed method ``method``; None when this installation has no such method."""
    try:
        return method_version(METHODS.get(method))
    except BenchError:
        return None


def stale_code_warnings(df: pd.DataFrame, installed: str | None = None) -> list[str]:
    """At most three lines: the cells of other harness code than ``installed`` (default: this installation's),
    the methods with cells of other method code than their installed module's, and the methods not installed."""
    installed = installed or harness_version()
    out = []
    harness = _strs(df, "harness_code")
    old = harness[harness != installed]
    if len(old):
        out.append(f"{len(old)} of {len(df)} cells were made by other harness code than the installed "
                   f"{installed[:6]}: {code_counts(old)}; {REMAKE}")
    mcode = _strs(df, "method_code")
    stale, unknown = [], []
    for method, idx in df.groupby("method", sort=True).groups.items():
        now = installed_method_code(str(method))
        if now is None:
            unknown.append(f"{method} ({len(idx)} cell{'s' * (len(idx) != 1)})")
            continue
        old = mcode[idx][mcode[idx] != now]
        if len(old):
            stale.append(f"{method} {len(old)} of {len(idx)} ({code_counts(old)}; installed {now[:6]})")
    if stale:
        out.append(f"cells made by other method code than the installed: {', '.join(stale)}; {REMAKE}")
    if unknown:
        out.append(f"not methods of this installation, so their cells cannot be remade here: {', '.join(unknown)}")
    return out


def folder_stale_code_warnings(folder: Path) -> list[str]:
    """:func:`stale_code_warnings` of a rendered results folder's ``runs.csv`` (none without one)."""
    runs = Path(folder) / "runs.csv"
    if not runs.is_file() or not runs.stat().st_size:
        return []
    return stale_code_warnings(pd.read_csv(runs, dtype=str, keep_default_na=False))


def stale_cells(folder: Path) -> list[str]:
    """Names of the cells under ``folder/runs`` made by other harness or method code than the installed (or by a
    method not installed): the cells :func:`stale_code_warnings` counts, read from each cell's ``row.json``."""
    installed, now = harness_version(), {}
    out = []
    for row_file in sorted(Path(folder).glob("runs/*/row.json")):
        row = json.loads(row_file.read_text())
        method = str(row.get("method"))
        if method not in now:
            now[method] = installed_method_code(method)
        if row.get("harness_code") != installed or now[method] is None or row.get("method_code") != now[method]:
            out.append(row_file.parent.name)
    return out
