"""The order a sweep submits its cells in: the costliest first, so that the last cells do not run alone.

With as many cells as slots and the grid's order, one long cell submitted last (SFR-on on Fashion-MNIST) keeps
one core busy for minutes after the others have nothing left to do. Submitting the longest cells first is the
classic longest-processing-time rule; a cell's cost is guessed from what its method's cells took the last time
this folder was rendered (``runs.csv``, any code: remaking a folder is when it matters most). Methods with no
earlier cell go first, since nothing says they are short.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

#: a cell's seconds as ``runs.csv`` records them (unlearning includes the method's setup)
COST_COLUMNS = ("unlearn_s", "sample_s", "evaluate_s", "probe_s", "refine_s")


def past_costs(runs_csv: Path) -> dict[str, float]:
    """Mean recorded seconds per cell of each method in ``runs_csv`` (empty when there is none)."""
    if not runs_csv.is_file():
        return {}
    per: dict[str, list[float]] = {}
    with runs_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                seconds = sum(float(row.get(c) or 0) for c in COST_COLUMNS)
            except ValueError:
                continue
            per.setdefault(row.get("method") or "", []).append(seconds)
    return {m: statistics.fmean(v) for m, v in per.items()}


def longest_first(todo: list, costs: dict[str, float]) -> list:
    """``todo`` (``(spec, name)`` pairs) with the cells of methods without a past cell first, then by
    decreasing past cost; the grid's order among equals."""
    unknown = max(costs.values(), default=0.0) + 1.0
    return sorted(todo, key=lambda item: -costs.get(item[0].method, unknown))
