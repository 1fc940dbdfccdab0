"""Reports from stored runs: paper-style tables (Markdown, LaTeX, CSV), ``summary.json``, ``metrics_long.csv``,
plots, sample grids and a self-contained ``report.html``; never recomputes anything.

The modules, lowest layer first (each imports only modules listed before it, so there is no import cycle):
``format`` (text of values and tables), ``stats`` (t quantile, intervals, spread by source), ``groups`` (row
labels, row order, metric columns), ``captions`` (the prose around the tables), ``tables`` (the tables and the
warnings printed with them), ``longform`` (``metrics_long.csv``), ``views`` (one profile's tables, Markdown,
LaTeX and summary), ``plots``, ``html`` (the page) and ``reporter`` (``Reporter`` and ``render``: the files of a
results folder). ``currency`` compares the code that made a folder's cells with the installed code. Callers
import from this package; the private helpers stay in their modules.
"""

from __future__ import annotations

from bench.reports.currency import folder_stale_code_warnings, stale_cells, stale_code_warnings
from bench.reports.format import to_latex, to_markdown
from bench.reports.groups import group_labels
from bench.reports.longform import long_csv_text, long_rows, metric_directions
from bench.reports.plots import plot_curves, plot_quality_forgetting
from bench.reports.reporter import DEFAULT_OVERLAYS, Reporter, render
from bench.reports.stats import interval, t_quantile
from bench.reports.tables import (
    aggregate,
    by_class_stats,
    by_class_table,
    code_warnings,
    failures_markdown,
    intervals_table,
    sanity_warnings,
    spread_stats,
    spread_table,
    stats_table,
)
from bench.reports.views import ProfileView

__all__ = ["DEFAULT_OVERLAYS", "ProfileView", "Reporter", "aggregate", "by_class_stats", "by_class_table",
           "code_warnings", "failures_markdown", "folder_stale_code_warnings", "group_labels", "interval",
           "intervals_table", "long_csv_text", "long_rows", "metric_directions", "plot_curves",
           "plot_quality_forgetting", "render", "sanity_warnings", "spread_stats", "spread_table", "stale_cells",
           "stale_code_warnings", "stats_table", "t_quantile", "to_latex", "to_markdown"]
