"""Probe-curve plots: UA and probe FID against unlearning wall-clock seconds and optimizer steps.

``curves`` is the concatenation of every cell's ``curve.csv`` with the identity columns the report
adds (``label``, ``method``, ``base_seed``, ``seed``, ``forget_class``). A ``kind`` column says
whether a point is a scheduled probe (UA and FID) or a bisection probe of the time-to-target search
(``refine``: UA only); older folders without it hold probes only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.store import save_png

#: FID values at or below this are drawn at it (FID can be ~0, or slightly negative numerically)
FID_FLOOR = 1e-2
X_AXES = (("unlearn_s", "unlearning wall-clock (s, probes excluded)"), ("grad_steps", "optimizer steps"))




def _prepared(curves: pd.DataFrame) -> pd.DataFrame:
    c = curves.copy()
    if "label" not in c:
        c["label"] = c["method"]
    if "kind" not in c:
        c["kind"] = "probe"
    c["kind"] = c["kind"].fillna("probe").astype(str)
    for col in ("base_seed", "seed", "forget_class"):
        if col not in c:
            c[col] = 0
    for col in ("iter", "unlearn_s", "grad_steps", "ua", "fid"):
        c[col] = pd.to_numeric(c[col], errors="coerce") if col in c else np.nan
    if c["iter"].isna().all():  # very old curves: order by optimizer steps
        c["iter"] = c["grad_steps"]
    return c


def _colors(order: list[str]):
    """label -> colour, by position in ``order`` (the same table order gives the same colours in every plot)."""
    import matplotlib.pyplot as plt

    palette = list(plt.get_cmap("tab10").colors)
    if len(order) > 10:  # distinct hues first (tab20's pairs of light and dark shades read as one colour)
        palette += list(plt.get_cmap("Dark2").colors) + list(plt.get_cmap("tab20b").colors)
    return {label: palette[k % len(palette)] for k, label in enumerate(order)}


def plot_curves(curves: pd.DataFrame, path: Path, methods: list[str] | None = None, title: str = "",
                target: float | None = None, fid_floor: float = FID_FLOOR, labels: list[str] | None = None) -> None:
    """Four panels: UA (scheduled and bisection probes on one line per cell, sorted by iteration) and
    probe FID (scheduled probes only, log scale, values ≤ ``fid_floor`` drawn hollow at the floor)
    against unlearning seconds and optimizer steps. ``methods`` selects by method name (every row
    label of those methods is drawn); ``labels`` (all row labels in table order) fixes the colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = _prepared(curves)
    if methods is not None:
        c = c[c["method"].isin(methods)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
    present = list(dict.fromkeys(c["label"]))
    order = [lb for lb in labels if lb in set(present)] if labels else present
    colors = _colors(list(labels) + [lb for lb in present if lb not in set(labels)] if labels else present)
    labels = order + [lb for lb in present if lb not in set(order)]
    any_fid = False
    for label in labels:
        color = colors[label]
        cells = c[c["label"] == label].groupby(["base_seed", "seed", "forget_class"], sort=True)
        for n, (_, g) in enumerate(cells):
            g = g.sort_values(["iter", "unlearn_s"], kind="stable")
            ua = g[g["ua"].notna()]
            probe = ua["kind"] != "refine"
            fid = g[(g["kind"] != "refine") & np.isfinite(g["fid"])]
            low = fid["fid"] <= fid_floor
            fid_y = fid["fid"].clip(lower=fid_floor)
            any_fid = any_fid or len(fid) > 0
            for col, (x, _) in enumerate(X_AXES):
                ax = axes[0][col]
                ax.plot(ua[x], ua["ua"], lw=1.4, alpha=0.8, color=color,
                        label=label if (n == 0 and col == 0) else None)
                ax.plot(ua[x][probe], ua["ua"][probe], ls="none", marker="o", ms=3.5, alpha=0.8, color=color)
                ax.plot(ua[x][~probe], ua["ua"][~probe], ls="none", marker="o", ms=1.8, alpha=0.8, color=color)
                ax = axes[1][col]
                ax.plot(fid[x], fid_y, lw=1.4, alpha=0.8, color=color)
                ax.plot(fid[x][~low], fid_y[~low], ls="none", marker="o", ms=3.5, alpha=0.8, color=color)
                ax.plot(fid[x][low], fid_y[low], ls="none", marker="o", ms=4.5, alpha=0.9, color=color,
                        markerfacecolor="none")
    for col, (_, xl) in enumerate(X_AXES):
        axes[1][col].set_xlabel(xl)
        if any_fid:
            axes[1][col].set_yscale("log")
    axes[0][0].set_ylabel("UA ↑ (large dots: probes, small: bisection probes)", fontsize=9)
    axes[1][0].set_ylabel(f"FID (probe, classifier features, log) ↓\nhollow: FID ≤ {fid_floor:g}, drawn at "
                          f"{fid_floor:g}", fontsize=9)
    if target is not None:
        for col in (0, 1):
            axes[0][col].axhline(target, color="grey", ls="--", lw=1)
    for row in (0, 1):
        for ax in axes[row]:
            ax.grid(alpha=0.3, which="both" if row == 1 else "major")
    if labels:
        axes[0][0].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def plot_quality_forgetting(points: pd.DataFrame, path: Path, labels: list[str] | None = None, title: str = "",
                            target: float | None = None, fid_floor: float = FID_FLOOR) -> None:
    """Quality against forgetting: FID (log scale, lower is better) against UA (higher is better), one
    point per cell, one colour per table row (``label``; reference rows drawn as squares). ``points``
    has columns ``label``, ``ua``, ``fid`` and optionally ``reference``; ``labels`` fixes the colour
    order (the table's row order). FID values ≤ ``fid_floor`` are drawn hollow at the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = points.copy()
    for col in ("ua", "fid"):
        p[col] = pd.to_numeric(p[col], errors="coerce") if col in p else np.nan
    p = p[np.isfinite(p["ua"]) & np.isfinite(p["fid"])]
    ref = p["reference"].astype(bool) if "reference" in p else pd.Series(False, index=p.index)
    present = list(dict.fromkeys(p["label"]))
    full = list(labels) + [lb for lb in present if lb not in set(labels)] if labels else present
    colors = _colors(full)
    order = [lb for lb in full if lb in set(present)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label in order:
        g = p[p["label"] == label]
        y = g["fid"].clip(lower=fid_floor)
        low = (g["fid"] <= fid_floor).to_numpy()
        marker = "s" if bool(ref[g.index].all()) else "o"
        color = colors[label]
        ax.scatter(g["ua"][~low], y[~low], s=42, marker=marker, color=color, alpha=0.85, edgecolors="white",
                   linewidths=0.5, label=label)
        if low.any():
            ax.scatter(g["ua"][low], y[low], s=46, marker=marker, facecolors="none", edgecolors=color,
                       label=None if (~low).any() else label)
    if len(p):
        ax.set_yscale("log")
    if target is not None:
        ax.axvline(target, color="grey", ls="--", lw=1)
    ax.set_xlabel("UA ↑ (forgetting)")
    ax.set_ylabel(f"FID ↓ (quality on the remaining classes, log; hollow: ≤ {fid_floor:g})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if order:
        ax.legend(fontsize=8, ncol=2 if len(order) > 6 else 1, loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
