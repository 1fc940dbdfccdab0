"""``metrics_long.csv``: one row per cell and metric value, with the metric's direction (higher/lower/none)
and the settings needed to compare values.

Long form so that values can be filtered and compared across tasks, profiles and methods without knowing
the columns of the wide ``runs.csv``; the directions come from the registered metrics.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from typing import Any

from bench.engine.plugins import load_all
from bench.metric import METRICS
from bench.reports.format import _missing, _num

LONG_ID = ("cell", "task", "method", "forget_class", "base_seed", "seed", "profile", "config_hash", "harness_code",
           "method_code")
LONG_SETTINGS = ("fid_backend", "fid_features", "fid_n_gen", "fid_n_ref", "n_ua", "n_per_class", "sampler",
                 "sampler_steps", "guidance_w", "ua_target", "dataset_variant", "device")
LONG_COLUMNS = LONG_ID + ("metric", "value", "direction") + LONG_SETTINGS
#: measured costs: lower is better
COST_METRICS = ("unlearn_s", "setup_s", "grad_steps", "backward_passes", "forward_images", "nfe",
                "peak_mem_unlearn_mb", "peak_mem_mb", "time_to_target_s", "time_to_target_steps",
                "time_to_target_iters")
#: measurements of the harness itself (evaluation, probes), recorded without a direction
HARNESS_METRICS = ("prepare_s", "sample_s", "evaluate_s", "probe_s", "refine_s", "refine_probes",
                   "peak_mem_sample_mb", "peak_mem_evaluate_mb")
_DIRECTIONS: dict[str, str] | None = None


def metric_directions() -> dict[str, str]:
    """Metric column -> ``higher``/``lower``/``none``: the registered metrics' directions (after
    ``bench.engine.plugins.load_all()``), cost columns ``lower``, harness measurements ``none``."""
    global _DIRECTIONS
    if _DIRECTIONS is None:
        out = {k: "none" for k in HARNESS_METRICS}
        out.update({k: "lower" for k in COST_METRICS})
        try:
            load_all()
            for name in METRICS.names():
                try:
                    dirs = METRICS.get(name).directions
                except Exception:  # noqa: BLE001 - a broken plugin must not break the report
                    continue
                out.update({k: "none" if d is None else ("higher" if d else "lower") for k, d in dirs.items()})
        except Exception as exc:  # noqa: BLE001
            print(f"bench: WARNING: metric directions unavailable ({exc}); metrics_long.csv lists cost columns "
                  f"only", file=sys.stderr)
        _DIRECTIONS = out
    return _DIRECTIONS


def long_rows(row: dict[str, Any], directions: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The long-form rows of one cell: one per metric value the row holds (registered metrics, costs, harness
    measurements); a value the cell recorded as missing (e.g. never reached the UA target) is kept, empty."""
    directions = metric_directions() if directions is None else directions
    ident = {k: row.get(k) for k in LONG_ID}
    settings = {k: row.get(k) for k in LONG_SETTINGS}
    out = []
    for metric, direction in directions.items():
        if metric not in row:
            continue
        v = row[metric]
        if isinstance(v, bool):
            v = float(v)
        elif not _missing(v) and not isinstance(v, (int, float)):
            f = _num(v)  # row.json stores NaN as "nan"
            if math.isnan(f) and str(v).strip().lower() != "nan":
                continue  # not a number at all
            v = f
        out.append({**ident, "metric": metric, "value": "" if _missing(v) else v, "direction": direction,
                    **settings})
    return out


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _long_chunk(rows: list[dict[str, Any]]) -> str:
    """One cell's lines of ``metrics_long.csv`` (no header)."""
    return "".join(_csv_line(["" if _missing(r.get(k)) else r.get(k) for k in LONG_COLUMNS]) for r in rows)


def long_csv_text(rows: list[dict[str, Any]]) -> str:
    """``metrics_long.csv`` of these result rows."""
    return _csv_line(list(LONG_COLUMNS)) + "".join(_long_chunk(long_rows(r)) for r in rows)
