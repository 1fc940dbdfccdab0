"""A profile's tables as frames: main (mean ± sd), 95% intervals, where the spread comes from and per forget
class, each with a machine-readable twin (``table.csv``, ``table_by_class.csv``, ``table_spread.csv``); plus
what is printed with the tables: code-mix and calibration warnings and the failures section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.reports.captions import guidance_text
from bench.reports.format import (
    _fmt,
    _interval_text,
    _json_or_none,
    _md_cell,
    _missing,
    _num,
    _parse_json,
    _strs,
    unavailable_notes,
)
from bench.reports.groups import COLUMNS, GROUP_KEYS, OPTIONAL, PEAK, _headers, _is_ref, _label_order, _prepare
from bench.reports.stats import _spread_sds, interval

#: metrics of the "where the spread comes from" table
SPREAD = ("ua", "retain_acc", "fid", "time_to_target_s", "time_to_target_steps")
#: metrics of the "95% intervals" table
INTERVALS = ("ua", "retain_acc", "fid", "time_to_target_s", "time_to_target_steps")
SUMMARY_KEYS = ("ua", "retain_acc", "fid", "kid", "unlearn_s", "grad_steps", "backward_passes", "nfe", PEAK,
                "time_to_target_s", "time_to_target_steps", "time_to_target_iters", "relearn_steps",
                "ua_sweep_min", "ua_completion_min", "ua_embed_attack", "ua_prompt_attack")


# Every table is assembled from per-row-label blocks (``_block``): the numbers of one row label depend only
# on its own cells and on the profile's column set and headers (``_Ctx``), so ``Reporter`` caches blocks and
# recomputes only the row labels that gained a cell.
@dataclass(frozen=True)
class _Ctx:
    """What a profile's tables look like: the metric columns present and their headers."""

    keys: tuple[str, ...]  # main-table metrics (COLUMNS present, OPTIONAL with a value)
    headers: tuple[tuple[str, str], ...]
    spread_keys: tuple[str, ...]
    interval_keys: tuple[str, ...]
    summary_keys: tuple[str, ...]
    sampler: bool


def _ctx(df: pd.DataFrame) -> _Ctx:
    keys = [c[0] for c in COLUMNS if c[0] in df.columns]
    keys += [c[0] for c in OPTIONAL if c[0] in df.columns and pd.to_numeric(df[c[0]], errors="coerce").notna().any()]
    return _Ctx(keys=tuple(keys), headers=tuple(_headers(df).items()),
                spread_keys=tuple(k for k in SPREAD if k in df), interval_keys=tuple(k for k in INTERVALS if k in df),
                summary_keys=tuple(k for k in SUMMARY_KEYS if k in df),
                sampler={"sampler", "sampler_steps", "guidance_w"} <= set(df.columns))


@dataclass
class _Block:
    """One row label's rows of every table (display and machine-readable) and its summary entry."""

    label: str
    agg: dict[str, Any]
    intervals: dict[str, Any]
    spread: dict[str, Any]
    stats: dict[str, Any]
    spread_stats: dict[str, Any]
    by_class: dict[int, dict[str, dict[str, float]]]  # forget class -> metric -> interval()
    by_class_cells: dict[int, int]
    by_class_stats: list[dict[str, Any]]
    summary: dict[str, Any]


def _csv_name(key: str) -> str:
    return "peak_mem_unlearn_mb" if key == PEAK else key


def _identity(g: pd.DataFrame, label: str, ref: bool) -> dict[str, Any]:
    first = g.iloc[0]
    return {"label": label, "method": str(first["method"]), "reference": ref, "cells": len(g),
            **{k: ("" if _missing(first.get(k)) else str(first.get(k))) for k in GROUP_KEYS}}


def _block(g: pd.DataFrame, label: str, is_ref: bool, ctx: _Ctx) -> _Block:
    headers = dict(ctx.headers)
    fmts = {key: fmt for key, _, _, fmt in COLUMNS + OPTIONAL}
    ivs = {key: interval(g[key]) for key in dict.fromkeys(ctx.keys + ctx.interval_keys + ctx.summary_keys)}
    sds = {key: _spread_sds(g, key) for key in ctx.spread_keys}
    first = g.iloc[0]

    agg: dict[str, Any] = {"method": label, "cells": len(g), "reference": is_ref}
    na = unavailable_notes(g)
    for key in ctx.keys:
        agg[headers[key]] = _fmt(g[key], fmts[key])
        if agg[headers[key]] == "–" and key in na:
            agg[headers[key]] = "n/a"  # the reason is in the caption
    if ctx.sampler:
        steps = _num(first["sampler_steps"])
        agg["sampler"] = ("skipped: " + str(first.get("skip_reason", "")) if first.get("status") == "skipped" else
                          f"{first['sampler']} {'?' if math.isnan(steps) else int(steps)}, {guidance_text(first)}")

    intervals: dict[str, Any] = {"method": label, "reference": is_ref, "cells": len(g)}
    for key in ctx.interval_keys:
        head = "FID ↓" if key == "fid" else headers[key]
        intervals[f"{head} 95% CI"] = _interval_text(ivs[key], fmts[key], len(g))

    spread: dict[str, Any] = {"method": label, "reference": is_ref, "base models": g["base_seed"].nunique(),
                              "seeds": g["seed"].nunique()}
    spread_st = {**_identity(g, label, is_ref), "base_models": spread["base models"], "seeds": spread["seeds"]}
    for key in ctx.spread_keys:
        head = "FID ↓" if key == "fid" else headers[key]
        spread[f"{head} (sd over base models / over seeds)"] = " / ".join(
            "–" if math.isnan(s) else fmts[key].format(s) for s in sds[key])
        spread_st[f"{key}_sd_over_base_models"], spread_st[f"{key}_sd_over_unlearning_seeds"] = sds[key]

    stats = _identity(g, label, is_ref)
    for key in ctx.keys:
        stats.update({f"{_csv_name(key)}_{k}": v for k, v in ivs[key].items()})

    by_class, by_class_cells, by_class_stats = {}, {}, []
    for c, gc in g.groupby("forget_class", sort=True):
        by_class[int(c)] = {key: interval(gc[key]) for key in ctx.keys}
        by_class_cells[int(c)] = len(gc)
        row = _identity(gc, label, is_ref)
        row["forget_class"] = int(c)
        for key in ctx.keys:
            row.update({f"{_csv_name(key)}_{k}": v for k, v in by_class[int(c)][key].items()})
        by_class_stats.append(row)

    overrides = _parse_json(str(first.get("config_overrides", "")))
    summary: dict[str, Any] = {
        "method": str(first["method"]), "cells": len(g),
        "base_seeds": sorted(int(v) for v in g["base_seed"].unique()),
        "seeds": sorted(int(v) for v in g["seed"].unique()),
        "forget_classes": sorted(int(v) for v in g["forget_class"].unique()),
        "config_hash": None if _missing(first.get("config_hash")) else str(first.get("config_hash")),
        "config_overrides": overrides if overrides is not None else {},
        "method_code": None if _missing(first.get("method_code")) else str(first.get("method_code")),
        "harness_code": None if _missing(first.get("harness_code")) else str(first.get("harness_code")),
    }
    for k in ctx.summary_keys:
        summary[_csv_name(k)] = _json_or_none(ivs[k]["mean"])
    summary["sd"] = {_csv_name(k): _json_or_none(ivs[k]["sd"]) for k in ctx.summary_keys}
    summary["n"] = {_csv_name(k): ivs[k]["n"] for k in ctx.summary_keys}
    summary["ci95"] = {_csv_name(k): (None if math.isnan(ivs[k]["ci95_lo"]) else
                                      [_json_or_none(ivs[k]["ci95_lo"]), _json_or_none(ivs[k]["ci95_hi"])])
                       for k in ctx.summary_keys}
    summary["spread"] = {k: dict(zip(("sd_over_base_models", "sd_over_unlearning_seeds"),
                                     (_json_or_none(s) for s in sds[k]))) for k in ctx.spread_keys}
    return _Block(label=label, agg=agg, intervals=intervals, spread=spread, stats=stats, spread_stats=spread_st,
                  by_class=by_class, by_class_cells=by_class_cells, by_class_stats=by_class_stats, summary=summary)


class _BlockCache:
    """Blocks by (label, the label's cells, ``_Ctx``); ``rotate()`` before each report drops the blocks the
    previous report did not use."""

    def __init__(self) -> None:
        self.old: dict = {}
        self.new: dict = {}

    def get(self, key):
        b = self.new.get(key)
        if b is None:
            b = self.old.get(key)
            if b is not None:
                self.new[key] = b
        return b

    def __setitem__(self, key, b: _Block) -> None:
        self.new[key] = b

    def rotate(self) -> None:
        self.old, self.new = self.new, {}

    def clear(self) -> None:
        self.old, self.new = {}, {}


def _blocks(df: pd.DataFrame, cache: _BlockCache | None = None) -> list[_Block]:
    """The blocks of every row label in table order. With a ``cache``, a label whose cells (by folder name;
    the caller clears the cache when a folder is replaced) and columns did not change is not recomputed."""
    df = _prepare(df)
    ctx = _ctx(df)
    ref = _is_ref(df)
    groups = dict(iter(df.groupby("label", sort=False)))
    out = []
    for label in _label_order(df):
        g = groups[label]
        key = (label, tuple(g["cell"].astype(str)), ctx) if ("cell" in g and cache is not None) else None
        b = cache.get(key) if key is not None else None
        if b is None:
            b = _block(g, label, bool(ref[g.index].all()), ctx)
            if key is not None:
                cache[key] = b
        out.append(b)
    return out


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, config, code version): mean ± sample std over cells, reference rows first."""
    return pd.DataFrame([b.agg for b in _blocks(df)])


def spread_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per row label and metric: ``sd over base models / sd over unlearning seeds`` (see ``_spread_sds``)."""
    return pd.DataFrame([b.spread for b in _blocks(df)])


def stats_table(df: pd.DataFrame) -> pd.DataFrame:
    """Machine-readable table (``table.csv``): one row per table row with, per metric, ``<metric>_mean``,
    ``_sd``, ``_n``, ``_ci95_lo`` and ``_ci95_hi`` (see ``interval``)."""
    return pd.DataFrame([b.stats for b in _blocks(df)])


def intervals_table(df: pd.DataFrame) -> pd.DataFrame:
    """Display table "95% intervals": per row label, ``[lo, hi]`` for UA, retain acc, FID and time/steps to
    target; ``–`` with fewer than 3 values, ``(k/n)`` when only k of the n cells have the value."""
    return pd.DataFrame([b.intervals for b in _blocks(df)])


def _classes(df: pd.DataFrame) -> list[int]:
    return sorted(int(c) for c in df["forget_class"].unique())


def by_class_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Machine-readable per-forget-class table (``table_by_class.csv``): one row per (table row, forget
    class) with the same metric columns as ``stats_table``."""
    return pd.DataFrame([r for b in _blocks(df) for r in b.by_class_stats])


def _by_class_display(blocks: list[_Block], classes: list[int]) -> pd.DataFrame:
    out = []
    for b in blocks:
        row = {"method": b.label, "reference": b.agg["reference"], "cells": b.agg["cells"]}
        for c in classes:
            st = b.by_class.get(c)
            if st is None:
                row[f"class {c}"] = "–"
                continue
            ua = st["ua"]["mean"] if "ua" in st else math.nan
            fid = st["fid"]["mean"] if "fid" in st else math.nan
            row[f"class {c}"] = f"{'–' if math.isnan(ua) else f'{ua:.3f}'} / {'–' if math.isnan(fid) else f'{fid:.2f}'}"
        out.append(row)
    return pd.DataFrame(out)


def by_class_table(df: pd.DataFrame) -> pd.DataFrame:
    """Display table as the SFR-on paper prints it: rows = table rows, columns = forget classes, each entry
    ``UA / FID`` (means over the row's cells with that forget class; ``–`` where there are none)."""
    df = _prepare(df)
    return _by_class_display(_blocks(df), _classes(df))


def spread_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Machine-readable "where the spread comes from" (``table_spread.csv``)."""
    return pd.DataFrame([b.spread_stats for b in _blocks(df)])


def _csv_frames(frames: list[pd.DataFrame]) -> str:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return ""
    return pd.concat(frames, ignore_index=True).to_csv(index=False, lineterminator="\n")


def code_counts(codes: pd.Series) -> str:
    """``3f2a1c (2 cells), unknown (1 cell)``: how many cells each code version made."""
    vc = codes.replace("", "unknown").map(lambda v: v[:6] if v != "unknown" else v).value_counts()
    return ", ".join(f"{k} ({n} cell{'s' * (n != 1)})" for k, n in vc.items())


def code_warnings(df: pd.DataFrame) -> list[str]:
    """One warning per kind of code mix: harness code across the table, method code within a method."""
    counts = code_counts

    tail = ("rows from different code are kept apart (labels with [code …]/[harness …]) but must not be "
            "compared as one method: rerun the stale cells (--no-resume) or use a fresh --out")
    out = []
    harness = _strs(df, "harness_code")
    if harness.nunique() > 1:
        out.append(f"the results folder mixes harness code versions: {counts(harness)}; {tail}")
    mcode = _strs(df, "method_code")
    for method, idx in df.groupby("method", sort=True).groups.items():
        if mcode[idx].nunique() > 1:
            out.append(f"the results folder mixes code versions of {method}: method code {counts(mcode[idx])}; "
                       f"{tail}")
    return out


def sanity_warnings(df: pd.DataFrame) -> list[str]:
    """protocol.md §9.1: Original must have UA near 0 and high retained accuracy, Retrain UA near 1."""
    def who(name: str, r) -> str:
        base = f"base seed {r['base_seed']}, " if "base_seed" in r else ""
        return f"{name} (class {r['forget_class']}, {base}seed {r['seed']})"

    out = []
    if not {"ua", "retain_acc"} <= set(df.columns):  # concept tasks scored by other metrics (nudity, drift)
        return out
    for _, r in df[df["method"] == "original"].iterrows():
        if r["ua"] > 0.2 or r["retain_acc"] < 0.8:
            out.append(f"{who('Original', r)} has UA {r['ua']:.2f} and retain acc {r['retain_acc']:.2f}: the "
                       f"profile looks mis-calibrated (guidance, sampler or base model)")
    for _, r in df[df["method"] == "retrain"].iterrows():
        if r["ua"] < 0.8:
            out.append(f"{who('Retrain', r)} has UA {r['ua']:.2f} < 0.8: the forget class is still generated "
                       f"without ever being trained on; the classifier or sampler is suspect")
    return out


def failures_markdown(failures: list[dict]) -> str:
    cols = ["method", "forget class", "base seed", "seed", "profile", "error"]
    lines = ["## Failures\n", f"{len(failures)} cell(s) raised; error and traceback in `failures/<cell>.json` "
             "(a later successful run of the cell removes its record).\n",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for f in failures:
        error = (str(f.get("error") or "").strip().splitlines() or ["?"])[0]
        vals = [f.get("method"), f.get("forget_class"), f.get("base_seed"), f.get("seed"), f.get("profile"), error]
        lines.append("| " + " | ".join("?" if _missing(v) else _md_cell(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"
