"""``ProfileView``: everything computed for one profile (tables, caption, warnings, Markdown, LaTeX and its
``summary.json`` entry), built once per report and shared by the text outputs, the plots and the HTML page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.reports.captions import (
    BY_CLASS_EXPLAIN,
    INTERVALS_EXPLAIN,
    SPREAD_EXPLAIN,
    _caption,
    _override_notes,
    _overrides,
)
from bench.reports.format import _json_or_none, _md_cell, _num, to_latex, to_markdown
from bench.reports.groups import _prepare
from bench.reports.tables import (
    _BlockCache,
    _blocks,
    _by_class_display,
    _classes,
    code_warnings,
    sanity_warnings,
)


@dataclass
class ProfileView:
    """Everything computed for one profile's tables (reused by the plots and the HTML page)."""

    profile: str
    df: pd.DataFrame
    table: pd.DataFrame
    stats: pd.DataFrame
    intervals: pd.DataFrame
    caption: str
    code: list[str]
    calib: list[str]
    overrides: list[tuple[str, str]]
    spread: pd.DataFrame | None = None
    spread_stats: pd.DataFrame | None = None
    by_class: pd.DataFrame | None = None
    by_class_stats: pd.DataFrame | None = None
    md: str = ""
    tex: str = ""
    summary: dict = field(default_factory=dict)

    @property
    def has_intervals(self) -> bool:
        """Whether any row has an interval (≥ 3 values of an interval metric)."""
        cols = [c for c in self.intervals.columns if c.endswith("95% CI")]
        return bool(cols) and bool((self.intervals[cols] != "–").to_numpy().any())

    @property
    def suffix(self) -> str:
        return "" if self.profile == "fast" else f"_{self.profile}"

    @property
    def target(self) -> float | None:
        t = _num(self.df["ua_target"].iloc[0]) if "ua_target" in self.df else math.nan
        return None if math.isnan(t) else t


def _profile_view(task: str, profile: str, dfp: pd.DataFrame, cache: _BlockCache | None = None) -> ProfileView:
    dfp = _prepare(dfp.reset_index(drop=True))
    blocks = _blocks(dfp, cache)
    classes = _classes(dfp)
    v = ProfileView(profile=profile, df=dfp, table=pd.DataFrame([b.agg for b in blocks]),
                    stats=pd.DataFrame([b.stats for b in blocks]),
                    intervals=pd.DataFrame([b.intervals for b in blocks]), caption=_caption(task, profile, dfp),
                    code=[f"profile {profile}: {w}" for w in code_warnings(dfp)], calib=sanity_warnings(dfp),
                    overrides=_overrides(dfp))
    md = [f"## Profile `{profile}`\n"]
    if v.code:
        md += ["**⚠ Warning: mixed code versions**\n"] + [f"- {_md_cell(w)}" for w in v.code] + [""]
    md += [v.caption + "\n", to_markdown(v.table), ""]
    notes = _override_notes(dfp)
    if notes:
        md.append(notes)
    if v.calib:
        md += ["**Calibration warnings**\n"] + [f"- {w}" for w in v.calib] + [""]
    tex = [to_latex(v.table, v.caption)]
    if v.has_intervals:
        md += ["### 95% intervals\n", f"{task}, profile {profile}: {INTERVALS_EXPLAIN}.\n", to_markdown(v.intervals),
               ""]
        tex.append(to_latex(v.intervals, f"95% intervals ({task}, profile {profile}): {INTERVALS_EXPLAIN}"))
    if dfp["base_seed"].nunique() >= 2:
        v.spread = pd.DataFrame([b.spread for b in blocks])
        v.spread_stats = pd.DataFrame([b.spread_stats for b in blocks])
        md += ["### Where the spread comes from\n", f"{task}, profile {profile}: {SPREAD_EXPLAIN}.\n",
               to_markdown(v.spread), ""]
        tex.append(to_latex(v.spread, f"Where the spread comes from ({task}, profile {profile}): {SPREAD_EXPLAIN}"))
    v.by_class_stats = pd.DataFrame([r for b in blocks for r in b.by_class_stats])
    if len(classes) >= 2:
        v.by_class = _by_class_display(blocks, classes)
        md += ["### Per forget class\n", f"{task}, profile {profile}: {BY_CLASS_EXPLAIN}.\n",
               to_markdown(v.by_class), ""]
        tex.append(to_latex(v.by_class, f"Per forget class ({task}, profile {profile}): {BY_CLASS_EXPLAIN}"))
    v.md, v.tex = "\n".join(md), "\n".join(tex)
    v.summary = {}
    for b in blocks:
        entry = dict(b.summary)
        if len(classes) >= 2:
            entry["by_forget_class"] = {
                str(c): {"cells": b.by_class_cells[c], **{k: _json_or_none(st[k]["mean"]) for k in ("ua", "fid")
                                                          if k in st}}
                for c, st in sorted(b.by_class.items())}
        v.summary[b.label] = entry
    return v


def _summary(df: pd.DataFrame) -> dict:
    """Per row label: identity, means and sample sds over cells, 95% intervals, the spread by source and,
    with ≥ 2 forget classes, UA and FID per forget class (the ``summary.json`` entry of a profile)."""
    return _profile_view("", "", df).summary
