from __future__ import annotations

import math

import pandas as pd

from bench.driver import time_to_target
from bench.report import aggregate, sanity_warnings, to_latex, to_markdown


def _row(method, seed, ua, fid, t, ref=False):
    return {"method": method, "seed": seed, "forget_class": 0, "ua": ua, "retain_acc": 0.9, "fid": fid, "kid": 0.1,
            "unlearn_s": t, "grad_steps": 10, "backward_passes": 20, "nfe": 50, "peak_mem_mb": 100.0,
            "time_to_target_s": math.nan, "time_to_target_steps": math.nan, "reference_row": ref,
            "ua_target": 0.9, "fid_features": "task-classifier", "fid_backend": "torch-fidelity", "fid_n_gen": 900,
            "sampler": "ddim", "sampler_steps": 25, "guidance_w": 0.5}


def test_aggregate_reports_the_mean_and_sample_std_not_the_last_value():
    df = pd.DataFrame([_row("salun", 0, 0.8, 10.0, 3.0), _row("salun", 1, 0.9, 12.0, 5.0),
                       _row("salun", 2, 1.0, 14.0, 7.0), _row("original", 0, 0.0, 1.0, 0.0, ref=True)])
    table = aggregate(df)
    assert list(table["method"]) == ["original", "salun"]  # reference rows first
    salun = table[table["method"] == "salun"].iloc[0]
    assert salun["UA ↑"] == "0.900 ± 0.100"
    fid_col = [c for c in table.columns if c.startswith("FID")][0]
    assert "task-classifier" in fid_col and "n=900" in fid_col
    assert salun[fid_col] == "12.00 ± 2.00"
    assert salun["time (s) ↓"] == "5.0 ± 2.0"
    assert salun["cells"] == 3
    md = to_markdown(table)
    assert "*original*" in md and "**salun**" in md
    tex = to_latex(table, "caption_with_underscore")
    assert r"$\pm$" in tex and r"caption\_with\_underscore" in tex and r"\midrule" in tex


def test_partial_time_to_target_is_marked():
    rows = [_row("ga", 0, 1.0, 5.0, 1.0), _row("ga", 1, 1.0, 5.0, 1.0)]
    rows[0]["time_to_target_s"] = 2.0
    table = aggregate(pd.DataFrame(rows))
    col = [c for c in table.columns if c.startswith("time to UA")][0]
    assert table.iloc[0][col] == "2.0 (1/2)"


def test_time_to_target_takes_the_first_probe_reaching_it():
    curve = [{"ua": 0.1, "unlearn_s": 0.0, "grad_steps": 0}, {"ua": 0.95, "unlearn_s": 2.5, "grad_steps": 20},
             {"ua": 0.99, "unlearn_s": 5.0, "grad_steps": 40}]
    assert time_to_target(curve, 0.9) == (2.5, 20.0)
    assert all(math.isnan(v) for v in time_to_target(curve, 0.999))


def test_sanity_warnings_flag_a_miscalibrated_original_and_retrain():
    df = pd.DataFrame([_row("original", 0, 0.7, 1.0, 0.0, True), _row("retrain", 0, 0.3, 1.0, 1.0, True)])
    warns = sanity_warnings(df)
    assert len(warns) == 2 and "mis-calibrated" in warns[0]
    ok = pd.DataFrame([_row("original", 0, 0.0, 1.0, 0.0, True), _row("retrain", 0, 0.99, 1.0, 1.0, True)])
    assert sanity_warnings(ok) == []
