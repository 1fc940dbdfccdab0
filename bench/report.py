"""Paper-style tables (Markdown, LaTeX), a summary and plots from stored runs; never recomputes anything.

A table row is one method with one resolved configuration and one code version: cells are grouped
by (method, ``config_hash``, ``harness_code``, ``method_code``), so the ± of a row is over seeds
(base models, unlearning seeds) and forget classes only, never over configurations. A method's
default group keeps the method's name; a ``--set``/``--steps`` group is labelled with the settings
that differ (``salun (lr=1e-05)``), and groups that differ only by code with the code hash
(``salun [code 3f2a1c]``), which also raises a warning: such a folder mixes code versions.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.hashing import atomic_write_text
from bench.plots import plot_curves
from bench.store import collect_failures, collect_rows, write_runs_csv

__all__ = ["aggregate", "code_warnings", "group_labels", "plot_curves", "render", "sanity_warnings",
           "spread_table", "to_latex", "to_markdown"]

PEAK = "_peak_mem_unlearn"  # derived: peak_mem_unlearn_mb, or the older peak_mem_mb

# (column, header, higher_is_better or None, format)
COLUMNS = [
    ("ua", "UA", True, "{:.3f}"),
    ("retain_acc", "retain acc", True, "{:.3f}"),
    ("fid", "FID{fid_note}", False, "{:.2f}"),
    ("kid", "KID", False, "{:.3f}"),
    ("unlearn_s", "time (s)", False, "{:.1f}"),
    ("grad_steps", "grad steps", False, "{:.0f}"),
    ("backward_passes", "backward passes", False, "{:.0f}"),
    ("nfe", "NFE/image", False, "{:.0f}"),
    (PEAK, "{mem_note}", False, "{:.0f}"),
    ("time_to_target_s", "time to UA≥{target} (s)", False, "{:.1f}"),
    ("time_to_target_steps", "steps to UA≥{target}", False, "{:.0f}"),
    ("time_to_target_iters", "iters to UA≥{target}", False, "{:.0f}"),
]
OPTIONAL = [("relearn_steps", "relearn steps", None, "{:.0f}")]
#: metrics of the "where the spread comes from" table
SPREAD = ("ua", "retain_acc", "fid", "time_to_target_s", "time_to_target_steps")
SUMMARY_KEYS = ("ua", "retain_acc", "fid", "kid", "unlearn_s", "grad_steps", "backward_passes", "nfe", PEAK,
                "time_to_target_s", "time_to_target_steps", "time_to_target_iters", "relearn_steps")
DEFAULT_OVERLAYS = (("sfd", "pecker"), ("sa", "ebu"), ("salun", "sfron"))
GROUP_KEYS = ("config_hash", "harness_code", "method_code")
REF_ORDER = {"original": 0, "retrain": 1}
MEM_KINDS = {"cpu-rss": "CPU RSS", "cuda-allocated": "CUDA allocated"}


# --- small helpers -----------------------------------------------------------------------------
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


def _is_ref(df: pd.DataFrame) -> pd.Series:
    if "reference_row" in df:
        return df["reference_row"].astype(str).str.lower() == "true"
    return df["method"].isin(list(REF_ORDER))


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


def _config_diff(ref: dict | None, cfg: dict | None, first: tuple[str, ...] = (), limit: int = 3) -> str | None:
    """``k=v`` for the keys whose resolved values differ from the reference group's (the user's own
    overrides first); None when either config is unknown."""
    if ref is None or cfg is None:
        return None
    absent = object()
    keys = [k for k in sorted(set(ref) | set(cfg)) if ref.get(k, absent) != cfg.get(k, absent)]
    keys.sort(key=lambda k: (k not in first, k))
    parts = [f"{k}={_short_value(cfg[k]) if k in cfg else '–'}" for k in keys]
    if len(parts) > limit:
        parts = parts[:limit] + [f"+{len(parts) - limit} more"]
    return ", ".join(parts)


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("._") or "row"


# --- grouping -----------------------------------------------------------------------------------
def group_labels(df: pd.DataFrame) -> pd.Series:
    """The table-row label of every cell: one row per (method, config_hash, harness_code, method_code).

    A method with one group is labelled by its name. Otherwise the reference group (empty overrides,
    else the largest) keeps the name, the others get the resolved settings that differ from it
    (``salun (lr=1e-05)``); groups whose labels would still coincide differ by code and get the short
    code hash (``salun [code 3f2a1c]``, ``[harness …]`` if only the harness code differs). Rows
    without these columns (older folders) form one group per method."""
    labels = pd.Series("", index=df.index, dtype=object)
    keys = pd.Series(list(zip(*(_strs(df, k) for k in GROUP_KEYS))), index=df.index, dtype=object)
    overrides, configs = _strs(df, "config_overrides"), _strs(df, "config_json")
    for method, gm in df.groupby("method", sort=False):
        ks = keys[gm.index]
        groups = list(dict.fromkeys(ks))
        if len(groups) == 1:
            labels[gm.index] = method
            continue
        first_idx = {k: ks.index[ks.map(lambda t, k=k: t == k).to_numpy(dtype=bool)] for k in groups}
        size = {k: len(first_idx[k]) for k in groups}
        default = [k for k in groups if overrides[first_idx[k]].isin(["", "{}"]).any()]
        ref = max(default or groups, key=lambda k: (size[k], -groups.index(k)))
        ref_cfg = _parse_json(configs[first_idx[ref][0]])
        names = {}
        for k in groups:
            if k[0] == ref[0]:  # same resolved config
                names[k] = str(method)
                continue
            own = _parse_json(overrides[first_idx[k][0]]) or {}
            diff = _config_diff(ref_cfg, _parse_json(configs[first_idx[k][0]]), tuple(own))
            names[k] = f"{method} ({diff or 'config ' + (k[0][:6] or '?')})"
        for name in set(names.values()):
            same = [k for k in groups if names[k] == name]
            if len(same) < 2:
                continue
            for k in same:
                tags = []
                if len({s[2] for s in same}) > 1:
                    tags.append(f"code {k[2][:6] or '?'}")
                if len({s[1] for s in same}) > 1:
                    tags.append(f"harness {k[1][:6] or '?'}")
                if not tags:
                    tags.append(f"config {k[0][:6] or '?'}")
                names[k] = f"{name} [{', '.join(tags)}]"
        for k in groups:
            labels[first_idx[k]] = names[k]
    return labels


def code_warnings(df: pd.DataFrame) -> list[str]:
    """One warning per kind of code mix: harness code across the table, method code within a method."""
    def counts(s: pd.Series) -> str:
        vc = s.replace("", "unknown").map(lambda v: v[:6] if v != "unknown" else v).value_counts()
        return ", ".join(f"{k} ({n} cell{'s' * (n != 1)})" for k, n in vc.items())

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


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns (idempotent): ``label``, the peak-memory column, defaults for older rows."""
    if "label" in df and PEAK in df:
        return df
    df = df.copy()
    if "label" not in df:
        df["label"] = group_labels(df)
    new = pd.to_numeric(df["peak_mem_unlearn_mb"], errors="coerce") if "peak_mem_unlearn_mb" in df else None
    old = pd.to_numeric(df["peak_mem_mb"], errors="coerce") if "peak_mem_mb" in df else None
    if new is not None:
        df[PEAK] = new.fillna(old) if old is not None else new
    elif old is not None:
        df[PEAK] = old
    for col in ("base_seed", "seed", "forget_class"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype(int) if col in df else 0
    return df


def _label_order(df: pd.DataFrame) -> list[str]:
    ref = _is_ref(df)
    keys = {}
    for label, g in df.groupby("label", sort=False):
        method, is_ref = str(g["method"].iloc[0]), bool(ref[g.index].all())
        keys[label] = (not is_ref, REF_ORDER.get(method, 2) if is_ref else 0, method, label != method, label)
    return sorted(keys, key=keys.get)


def _mem_header(df: pd.DataFrame) -> str:
    kinds = sorted(set(_strs(df, "peak_mem_kind")) - {""})
    kind = " / ".join(MEM_KINDS.get(k, k) for k in kinds) or "?"
    has_new = (pd.to_numeric(df["peak_mem_unlearn_mb"], errors="coerce").notna() if "peak_mem_unlearn_mb" in df
               else pd.Series(False, index=df.index))
    if has_new.all():
        return f"peak mem Δ unlearn (MiB, {kind} above phase start)"
    if not has_new.any():
        return f"peak mem unlearn (MiB, {kind}, absolute: older cells)"
    return f"peak mem unlearn (MiB, {kind}; Δ above phase start, absolute for older cells)"


def _headers(df: pd.DataFrame) -> dict[str, str]:
    first = df.iloc[0]
    target = _num(first.get("ua_target", 0.9))
    target = 0.9 if math.isnan(target) else target
    n_gen = _num(first.get("fid_n_gen"))
    fid_note = (f" ({first.get('fid_features', '?')}, {first.get('fid_backend', '?')}, "
                f"n={'?' if math.isnan(n_gen) else int(n_gen)})")
    return {key: header.format(fid_note=fid_note, target=f"{target:g}", mem_note=_mem_header(df)) + _arrow(d)
            for key, header, d, _ in COLUMNS + OPTIONAL}


# --- tables -------------------------------------------------------------------------------------
def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, config, code version): mean ± sample std over cells, reference rows first."""
    df = _prepare(df)
    cols = [c for c in COLUMNS if c[0] in df.columns]
    cols += [c for c in OPTIONAL if c[0] in df.columns and pd.to_numeric(df[c[0]], errors="coerce").notna().any()]
    headers = _headers(df)
    ref = _is_ref(df)
    out = []
    for label in _label_order(df):
        g = df[df["label"] == label]
        row = {"method": label, "cells": len(g), "reference": bool(ref[g.index].all())}
        for key, _, _, fmt in cols:
            row[headers[key]] = _fmt(g[key], fmt)
        if {"sampler", "sampler_steps", "guidance_w"} <= set(g.columns):
            steps = _num(g["sampler_steps"].iloc[0])
            row["sampler"] = (f"{g['sampler'].iloc[0]} {'?' if math.isnan(steps) else int(steps)}, "
                              f"w={g['guidance_w'].iloc[0]}")
        out.append(row)
    return pd.DataFrame(out)


def _spread_sds(g: pd.DataFrame, key: str) -> tuple[float, float]:
    """(sd over base models, sd over unlearning seeds) of ``key`` within one row label.

    Per forget class: the sample sd (ddof=1) of the per-base-seed means, and the within-base-seed
    sample variances (base seeds with ≥ 2 seeds); pooled over forget classes as the root mean of the
    variances (with one forget class: exactly the sd of the means and sqrt(mean within variance)).
    Cells without the value (never reached the target) are left out. NaN where not computable."""
    v = pd.DataFrame({"v": pd.to_numeric(g[key], errors="coerce"), "b": g["base_seed"],
                      "f": g["forget_class"]}).dropna(subset=["v"])
    between, within = [], []
    for _, gf in v.groupby("f"):
        means = gf.groupby("b")["v"].mean()
        if len(means) >= 2:
            between.append(means.var(ddof=1))
        within += [gb["v"].var(ddof=1) for _, gb in gf.groupby("b") if len(gb) >= 2]
    sd = [math.sqrt(float(np.mean(x))) if x else math.nan for x in (between, within)]
    return sd[0], sd[1]


def spread_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per row label and metric: ``sd over base models / sd over unlearning seeds`` (see ``_spread_sds``)."""
    df = _prepare(df)
    headers = _headers(df)
    fmts = {key: fmt for key, _, _, fmt in COLUMNS}
    keys = [k for k in SPREAD if k in df]
    ref = _is_ref(df)
    out = []
    for label in _label_order(df):
        g = df[df["label"] == label]
        row = {"method": label, "reference": bool(ref[g.index].all()), "base models": g["base_seed"].nunique(),
               "seeds": g["seed"].nunique()}
        for key in keys:
            sds = _spread_sds(g, key)
            head = "FID ↓" if key == "fid" else headers[key]
            row[f"{head} (sd over base models / over seeds)"] = " / ".join(
                "–" if math.isnan(s) else fmts[key].format(s) for s in sds)
        out.append(row)
    return pd.DataFrame(out)


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


def sanity_warnings(df: pd.DataFrame) -> list[str]:
    """protocol.md §9.1: Original must have UA near 0 and high retained accuracy, Retrain UA near 1."""
    def who(name: str, r) -> str:
        base = f"base seed {r['base_seed']}, " if "base_seed" in r else ""
        return f"{name} (class {r['forget_class']}, {base}seed {r['seed']})"

    out = []
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


def _caption(task: str, profile: str, df: pd.DataFrame) -> str:
    first = df.iloc[0]

    def get(key: str, fmt: str = "{}") -> str:
        v = first.get(key)
        if _missing(v):
            return "?"
        return fmt.format(int(v) if fmt == "{:d}" else v)

    def values(col: str) -> list:
        return sorted(int(v) for v in df[col].unique())

    return (f"{task}, profile {profile}: forget class(es) {values('forget_class')}, base models (base seeds) "
            f"{values('base_seed')}, unlearning seeds {values('seed')}; mean ± sample sd over a row's cells. UA from "
            f"{get('n_ua', '{:d}')} forget-class samples scored by the task classifier (test acc "
            f"{get('classifier_test_acc', '{:.3f}')}); FID on {get('fid_features')} features "
            f"({get('fid_backend')}), {get('fid_n_gen', '{:d}')} generated vs {get('fid_n_ref', '{:d}')} real "
            f"remaining-class images; times on {get('device')}")


def _override_notes(df: pd.DataFrame) -> str:
    ov = _strs(df, "config_overrides")
    parts = []
    for label in _label_order(df):
        sets = {s for s in ov[df["label"] == label] if s not in ("", "{}")}
        for s in sorted(sets):
            d = _parse_json(s)
            text = ", ".join(f"{k}={_short_value(v)}" for k, v in d.items()) if d is not None else s
            parts.append(f"**{_md_cell(label)}**: {_md_cell(text)}")
    return ("Non-default settings (`--set`, `--steps`): " + "; ".join(parts) + "\n") if parts else ""


# --- plots and sample grids -----------------------------------------------------------------------
def _load_curves(tdir: Path, df: pd.DataFrame) -> pd.DataFrame:
    frames = []
    if "cell" not in df:
        return pd.DataFrame()
    for _, r in df.iterrows():
        path = tdir / "runs" / str(r["cell"]) / "curve.csv"
        if not (path.is_file() and path.stat().st_size > 0):
            continue
        try:
            c = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        for col in ("method", "label", "base_seed", "seed", "forget_class"):
            c[col] = r[col]
        frames.append(c)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _copy_samples(tdir: Path, df: pd.DataFrame, suffix: str) -> None:
    if "cell" not in df:
        return
    samples = tdir / "samples"
    samples.mkdir(exist_ok=True)
    used: set[str] = set()
    for label in _label_order(df):
        g = df[df["label"] == label].sort_values(["base_seed", "seed", "forget_class", "cell"])
        name = _safe_name(label)
        while name in used:
            name += "_"
        used.add(name)
        src = tdir / "runs" / str(g["cell"].iloc[0]) / "samples.png"
        if src.is_file():
            shutil.copyfile(src, samples / f"{name}{suffix}.png")


# --- render ---------------------------------------------------------------------------------------
def _render_profile(tdir: Path, task: str, profile: str, dfp: pd.DataFrame, overlays,
                    quiet: bool = False) -> tuple[str, str, dict]:
    dfp = _prepare(dfp.reset_index(drop=True))
    table = aggregate(dfp)
    caption = _caption(task, profile, dfp)
    md = [f"## Profile `{profile}`\n"]
    code = [f"profile {profile}: {w}" for w in code_warnings(dfp)]
    if code:
        md += ["**⚠ Warning: mixed code versions**\n"] + [f"- {_md_cell(w)}" for w in code] + [""]
    md += [caption + "\n", to_markdown(table), ""]
    notes = _override_notes(dfp)
    if notes:
        md.append(notes)
    calib = sanity_warnings(dfp)
    if calib:
        md += ["**Calibration warnings**\n"] + [f"- {w}" for w in calib] + [""]
    for w in [] if quiet else code + calib:
        print(f"bench: WARNING: {w}", file=sys.stderr)
    tex = [to_latex(table, caption)]
    if dfp["base_seed"].nunique() >= 2:
        spread = spread_table(dfp)
        explain = ("each entry is sd over base models / sd over unlearning seeds: the sample sd (ddof=1) of the "
                   "per-base-model means, and the root mean of the within-base-model sample variances over "
                   "unlearning seeds (base models with ≥ 2 seeds; pooled over forget classes); – where not "
                   "computable")
        md += ["### Where the spread comes from\n", f"{task}, profile {profile}: {explain}.\n", to_markdown(spread), ""]
        tex.append(to_latex(spread, f"Where the spread comes from ({task}, profile {profile}): {explain}"))
    curves = _load_curves(tdir, dfp)
    suffix = "" if profile == "fast" else f"_{profile}"
    target = _num(dfp["ua_target"].iloc[0]) if "ua_target" in dfp else math.nan
    target = None if math.isnan(target) else target
    if not curves.empty:
        plot_curves(curves, tdir / f"curves{suffix}.png", title=f"{task} ({profile}): probe curves", target=target)
        for names in overlays:
            if set(names) <= set(curves["method"]):
                plot_curves(curves, tdir / f"overlay_{'_'.join(names)}{suffix}.png", list(names),
                            title=f"{' vs '.join(names)}: same task, seeds and budget ({profile})", target=target)
    _copy_samples(tdir, dfp, suffix)
    return "\n".join(md), "\n".join(tex), _summary(dfp)


def render(tdir: Path, overlays=DEFAULT_OVERLAYS, quiet: bool = False) -> str:
    """Write runs.csv, table.md, table.tex, summary.json, plots and sample grids under ``tdir``; return
    the Markdown. Raises BenchError only when there are neither completed runs nor recorded failures."""
    tdir = Path(tdir)
    out, task = tdir.parent, tdir.name
    rows = collect_rows(out, task)
    done = {r.get("cell") for r in rows}
    failures = [f for f in collect_failures(out, task) if f.get("cell") not in done or f.get("cell") is None]
    if not rows and not failures:
        from bench.errors import BenchError

        raise BenchError(f"no completed runs under {tdir / 'runs'}")
    write_runs_csv(out, task)
    md_parts, tex_parts, summary = [f"# {task}\n"], [], {}
    if rows:
        df = pd.DataFrame(rows)
        if "profile" not in df:
            df["profile"] = "?"
        for profile, dfp in df.groupby("profile", sort=False):
            md, tex, summ = _render_profile(tdir, task, str(profile), dfp, overlays, quiet)
            md_parts.append(md)
            tex_parts.append(tex)
            summary[str(profile)] = summ
    else:
        md_parts.append("No completed runs yet.\n")
        tex_parts.append("% no completed runs yet\n")
    if failures:
        md_parts.append(failures_markdown(failures))
        summary["failures"] = [{k: f.get(k) for k in ("cell", "method", "forget_class", "base_seed", "seed",
                                                       "profile", "error", "created")} for f in failures]
        if not quiet:
            print(f"bench: WARNING: {len(failures)} cell(s) failed; see the Failures section of "
                  f"{tdir / 'table.md'}", file=sys.stderr)
    md = "\n".join(md_parts).rstrip() + "\n"
    atomic_write_text(tdir / "table.md", md)
    atomic_write_text(tdir / "table.tex", "\n".join(tex_parts))
    atomic_write_text(tdir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return md


def _summary(df: pd.DataFrame) -> dict:
    """Per row label: identity, means and sample sds over cells, and the spread by source."""
    df = _prepare(df)
    out = {}
    for label in _label_order(df):
        g = df[df["label"] == label]
        first = g.iloc[0]
        overrides = _parse_json(str(first.get("config_overrides", "")))
        entry: dict[str, Any] = {
            "method": str(first["method"]), "cells": len(g),
            "base_seeds": sorted(int(v) for v in g["base_seed"].unique()),
            "seeds": sorted(int(v) for v in g["seed"].unique()),
            "config_hash": None if _missing(first.get("config_hash")) else str(first.get("config_hash")),
            "config_overrides": overrides if overrides is not None else {},
            "method_code": None if _missing(first.get("method_code")) else str(first.get("method_code")),
            "harness_code": None if _missing(first.get("harness_code")) else str(first.get("harness_code")),
        }
        keys = [k for k in SUMMARY_KEYS if k in g]
        for k in keys:
            name = "peak_mem_unlearn_mb" if k == PEAK else k
            entry[name] = _json_or_none(pd.to_numeric(g[k], errors="coerce").mean())
        entry["sd"] = {("peak_mem_unlearn_mb" if k == PEAK else k):
                       _json_or_none(pd.to_numeric(g[k], errors="coerce").std(ddof=1)) for k in keys}
        entry["spread"] = {k: dict(zip(("sd_over_base_models", "sd_over_unlearning_seeds"),
                                       (_json_or_none(s) for s in _spread_sds(g, k)))) for k in SPREAD if k in g}
        out[label] = entry
    return out
