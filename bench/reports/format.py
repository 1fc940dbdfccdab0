"""Text of the report's cells and tables: numbers and ``mean ± sd`` entries, short config values, Markdown
and LaTeX tables.

Pure functions of values and frames that know nothing about cells or row grouping, so every other module of
``bench.reports`` can use them without an import cycle.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pandas as pd


def _arrow(direction: bool | None) -> str:
    return "" if direction is None else (" ↑" if direction else " ↓")


def _fmt(values: pd.Series, fmt: str) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if len(v) == 0:
        return "–"
    if len(v) == 1 or len(values) == 1:
        s = fmt.format(v.mean())
    else:
        s = f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}"
    if len(v) < len(values):  # some cells never reached it (time to target) or lacked the value
        s += f" ({len(v)}/{len(values)})"
    return s


def unavailable_notes(df: pd.DataFrame) -> dict[str, str]:
    """Column -> the reason a metric could not be computed (``<metric>_columns`` / ``<metric>_note``)."""
    out: dict[str, str] = {}
    for col in [c for c in df.columns if c.endswith("_columns")]:
        note_col = col[: -len("_columns")] + "_note"
        if note_col not in df:
            continue
        for cols, note in zip(df[col], df[note_col]):
            if isinstance(cols, str) and isinstance(note, str) and note:
                for key in cols.split(","):
                    out.setdefault(key, note)
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _strs(df: pd.DataFrame, col: str) -> pd.Series:
    """``df[col]`` as strings, missing column or values as ''."""
    if col not in df:
        return pd.Series("", index=df.index, dtype=object)
    return df[col].map(lambda v: "" if _missing(v) else str(v))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _json_or_none(v: Any) -> float | None:
    f = _num(v)
    return None if math.isnan(f) or math.isinf(f) else f


def _short_value(v: Any) -> str:
    if isinstance(v, float):
        s = repr(v)
    elif isinstance(v, (str, bool, int)) or v is None:
        s = str(v)
    else:
        s = json.dumps(v, separators=(",", ":"), sort_keys=True)
    return s if len(s) <= 24 else s[:23] + "…"


def _parse_json(s: str) -> dict | None:
    try:
        v = json.loads(s)
    except (TypeError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("._") or "row"


def _interval_text(st: dict, fmt: str, cells: int) -> str:
    if st["n"] < 3:
        return "–"
    s = f"[{fmt.format(st['ci95_lo'])}, {fmt.format(st['ci95_hi'])}]"
    return s + (f" ({st['n']}/{cells})" if st["n"] < cells else "")


def _md_cell(v: Any) -> str:
    return str(v).replace("|", r"\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c not in ("reference",)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    prev_ref = None
    for _, r in table.iterrows():
        if prev_ref is True and not r["reference"]:
            lines.append("| " + " | ".join("" for _ in cols) + " |")
        name = _md_cell(r["method"])
        name = f"*{name}*" if r["reference"] else f"**{name}**"
        lines.append("| " + " | ".join([name] + [_md_cell(r[c]) for c in cols[1:]]) + " |")
        prev_ref = bool(r["reference"])
    return "\n".join(lines)


_TEX = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "|": r"\textbar{}",
        "<": r"$<$", ">": r"$>$", "[": "{[}", "]": "{]}", "±": r"$\pm$", "↑": r"$\uparrow$",
        "↓": r"$\downarrow$", "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "Δ": r"$\Delta$", "…": r"\ldots{}"}


def _tex_escape(s: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def to_latex(table: pd.DataFrame, caption: str) -> str:
    cols = [c for c in table.columns if c not in ("reference",)]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(_tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    prev_ref = None
    for _, r in table.iterrows():
        if prev_ref is True and not r["reference"]:
            lines.append(r"\midrule")
        name = _tex_escape(r["method"])
        name = rf"\textit{{{name}}}" if r["reference"] else name
        lines.append(" & ".join([name] + [_tex_escape(r[c]) for c in cols[1:]]) + r" \\")
        prev_ref = bool(r["reference"])
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"
