"""Paper-style tables (Markdown, LaTeX) and plots from stored runs; never recomputes anything."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd

from bench.hashing import atomic_write_text
from bench.store import collect_rows, write_runs_csv

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
    ("peak_mem_mb", "peak mem (MiB)", False, "{:.0f}"),
    ("time_to_target_s", "time to UA≥{target} (s)", False, "{:.1f}"),
    ("time_to_target_steps", "steps to UA≥{target}", False, "{:.0f}"),
]
OPTIONAL = [("relearn_steps", "relearn steps", None, "{:.0f}")]
DEFAULT_OVERLAYS = (("sfd", "pecker"), ("sa", "ebu"), ("salun", "sfron"))


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


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean ± std over seeds and forget classes, reference rows first."""
    cols = [c for c in COLUMNS + OPTIONAL if c[0] in df.columns and df[c[0]].notna().any()]
    first = df.iloc[0]
    target = first.get("ua_target", 0.9)
    fid_note = (f" ({first.get('fid_features', '?')}, {first.get('fid_backend', '?')}, "
                f"n={int(first.get('fid_n_gen', 0))})")
    if "reference_row" in df:
        ref = df["reference_row"].astype(str).str.lower() == "true"
    else:
        ref = df["method"].isin(["original", "retrain"])
    order = list(dict.fromkeys(list(df[ref]["method"].sort_values(key=lambda s: s.map(
        {"original": 0, "retrain": 1}).fillna(2))) + sorted(df[~ref]["method"].unique())))
    out = []
    for method in order:
        g = df[df["method"] == method]
        row = {"method": method, "cells": len(g), "reference": bool(ref[g.index].all())}
        for key, header, direction, fmt in cols:
            name = header.format(fid_note=fid_note, target=target) + _arrow(direction)
            row[name] = _fmt(g[key], fmt)
        row["sampler"] = f"{g['sampler'].iloc[0]} {int(g['sampler_steps'].iloc[0])}, w={g['guidance_w'].iloc[0]}"
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c not in ("reference",)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    prev_ref = None
    for _, r in table.iterrows():
        if prev_ref is True and not r["reference"]:
            lines.append("| " + " | ".join("" for _ in cols) + " |")
        name = f"*{r['method']}*" if r["reference"] else f"**{r['method']}**"
        lines.append("| " + " | ".join([name] + [str(r[c]) for c in cols[1:]]) + " |")
        prev_ref = bool(r["reference"])
    return "\n".join(lines)


def _tex_escape(s: str) -> str:
    rep = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "±": r"$\pm$", "↑": r"$\uparrow$",
           "↓": r"$\downarrow$", "≥": r"$\geq$", "–": "--"}
    return "".join(rep.get(ch, ch) for ch in str(s))


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
    out = []
    for _, r in df[df["method"] == "original"].iterrows():
        if r["ua"] > 0.2 or r["retain_acc"] < 0.8:
            out.append(f"Original (class {r['forget_class']}, seed {r['seed']}) has UA {r['ua']:.2f} and retain acc "
                       f"{r['retain_acc']:.2f}: the profile looks mis-calibrated (guidance, sampler or base model)")
    for _, r in df[df["method"] == "retrain"].iterrows():
        if r["ua"] < 0.8:
            out.append(f"Retrain (class {r['forget_class']}, seed {r['seed']}) has UA {r['ua']:.2f} < 0.8: the forget "
                       f"class is still generated without ever being trained on; the classifier or sampler is suspect")
    return out


def _load_curves(tdir: Path, df: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for cell, method, seed, fc in zip(df["cell"], df["method"], df["seed"], df["forget_class"]):
        path = tdir / "runs" / cell / "curve.csv"
        if path.is_file() and path.stat().st_size > 0:
            c = pd.read_csv(path)
            c["method"], c["seed"], c["forget_class"] = method, seed, fc
            frames.append(c)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_curves(curves: pd.DataFrame, path: Path, methods: list[str] | None = None, title: str = "",
                target: float | None = None) -> None:
    """UA and probe FID against unlearning wall-clock seconds and optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if methods is not None:
        curves = curves[curves["method"].isin(methods)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
    cmap = plt.get_cmap("tab10")
    names = list(dict.fromkeys(curves["method"]))
    for k, method in enumerate(names):
        color = cmap(k % 10)
        for n, ((_, _), g) in enumerate(curves[curves["method"] == method].groupby(["seed", "forget_class"])):
            label = method if n == 0 else None
            for row, metric in enumerate(("ua", "fid")):
                for col, x in enumerate(("unlearn_s", "grad_steps")):
                    axes[row][col].plot(g[x], g[metric], marker="o", ms=3, lw=1.4, alpha=0.8, color=color,
                                        label=label if (row, col) == (0, 0) else None)
    for col, xl in enumerate(("unlearning wall-clock (s, probes excluded)", "optimizer steps")):
        axes[1][col].set_xlabel(xl)
    for row, yl in enumerate(("UA (probe) ↑", "FID (probe, classifier features) ↓")):
        axes[row][0].set_ylabel(yl)
    if target is not None:
        for col in (0, 1):
            axes[0][col].axhline(target, color="grey", ls="--", lw=1)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(tdir: Path, overlays=DEFAULT_OVERLAYS, quiet: bool = False) -> str:
    """Write runs.csv, table.md, table.tex, plots and sample grids under ``tdir``; return the Markdown."""
    tdir = Path(tdir)
    out, task = tdir.parent, tdir.name
    rows = collect_rows(out, task)
    if not rows:
        from bench.errors import BenchError

        raise BenchError(f"no completed runs under {tdir / 'runs'}")
    write_runs_csv(out, task)
    df = pd.DataFrame(rows)
    md_parts, tex_parts = [f"# {task}\n"], []
    for profile, dfp in df.groupby("profile", sort=False):
        dfp = dfp.reset_index(drop=True)
        table = aggregate(dfp)
        first = dfp.iloc[0]
        caption = (f"{task}, profile {profile}: forget class(es) {sorted(dfp['forget_class'].unique().tolist())}, "
                   f"seeds {sorted(dfp['seed'].unique().tolist())}; UA from {int(first['n_ua'])} forget-class samples "
                   f"scored by the task classifier (test acc {first['classifier_test_acc']:.3f}); FID on "
                   f"{first['fid_features']} features ({first['fid_backend']}), {int(first['fid_n_gen'])} generated vs "
                   f"{int(first['fid_n_ref'])} real remaining-class images; times on {first['device']}")
        md_parts += [f"## Profile `{profile}`\n", caption + "\n", to_markdown(table), ""]
        warns = sanity_warnings(dfp)
        if warns:
            md_parts += ["**Calibration warnings**\n"] + [f"- {w}" for w in warns] + [""]
            for w in warns:
                print(f"bench: WARNING: {w}", file=sys.stderr)
        tex_parts.append(to_latex(table, caption))
        curves = _load_curves(tdir, dfp)
        if not curves.empty:
            suffix = "" if profile == "fast" else f"_{profile}"
            plot_curves(curves, tdir / f"curves{suffix}.png", title=f"{task} ({profile}): probe curves",
                        target=float(first["ua_target"]))
            for a, b in overlays:
                if {a, b} <= set(curves["method"]):
                    plot_curves(curves, tdir / f"overlay_{a}_{b}{suffix}.png", [a, b],
                                title=f"{a} vs {b}: same task, seeds and budget ({profile})",
                                target=float(first["ua_target"]))
        samples = tdir / "samples"
        samples.mkdir(exist_ok=True)
        for method, g in dfp.groupby("method"):
            src = tdir / "runs" / g.sort_values("seed")["cell"].iloc[0] / "samples.png"
            if src.is_file():
                shutil.copyfile(src, samples / f"{method}{'' if profile == 'fast' else '_' + profile}.png")
    md = "\n".join(md_parts).rstrip() + "\n"
    atomic_write_text(tdir / "table.md", md)
    atomic_write_text(tdir / "table.tex", "\n".join(tex_parts))
    atomic_write_text(tdir / "summary.json", json.dumps(_summary(df), indent=2) + "\n")
    return md


def _summary(df: pd.DataFrame) -> dict:
    keys = ["ua", "retain_acc", "fid", "unlearn_s", "grad_steps", "time_to_target_s"]
    out = {}
    for (profile, method), g in df.groupby(["profile", "method"]):
        out.setdefault(profile, {})[method] = {
            k: (None if math.isnan(v) else v) for k in keys if k in g
            for v in [float(pd.to_numeric(g[k], errors="coerce").mean())]}
    return out
