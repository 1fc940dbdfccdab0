from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.core.errors import BenchError
from bench.core.hashing import content_hash
from bench.core.store import write_cell, write_failure
from bench.engine.driver import time_to_target
from bench.reports import (
    Reporter,
    aggregate,
    by_class_table,
    code_warnings,
    group_labels,
    interval,
    intervals_table,
    plot_curves,
    render,
    sanity_warnings,
    spread_table,
    t_quantile,
    to_latex,
    to_markdown,
)

TASK = "digits-class"
SALUN_CFG = {"alpha": 0.048, "iters": 150, "lr": 1e-4, "mask_ratio": 0.5}


def _row(method, seed, ua, fid, t, ref=False, **extra):
    row = {"method": method, "seed": seed, "forget_class": 0, "ua": ua, "retain_acc": 0.9, "fid": fid, "kid": 0.1,
           "unlearn_s": t, "grad_steps": 10, "backward_passes": 20, "nfe": 50, "peak_mem_mb": 100.0,
           "time_to_target_s": math.nan, "time_to_target_steps": math.nan, "reference_row": ref,
           "ua_target": 0.9, "fid_features": "task-classifier", "fid_backend": "torch-fidelity", "fid_n_gen": 900,
           "sampler": "ddim", "sampler_steps": 25, "guidance_w": 0.5}
    row.update(extra)
    return row


def _new_row(method, base_seed, seed, ua, ref=False, cfg=None, overrides=None, method_code="m0000000aaaa",
             harness_code="h0000000aaaa", profile="fast", **extra):
    """A row in the driver's current format (base seed, config and code columns, peak mem Δ)."""
    cfg = dict(SALUN_CFG if cfg is None else cfg)
    row = _row(method, seed, ua, 0.5, 10.0, ref)
    del row["peak_mem_mb"]
    row.update({
        "base_seed": base_seed, "profile": profile, "status": "spec", "task": TASK,
        "cell": f"{method}-f0-b{base_seed}-s{seed}-{profile}-{content_hash([cfg, method_code], 8)}",
        "config_hash": content_hash(cfg, 12),
        "config_json": json.dumps(cfg, sort_keys=True), "config_overrides": json.dumps(overrides or {}),
        "harness_code": harness_code, "method_code": method_code, "peak_mem_unlearn_mb": 64.0,
        "peak_mem_sample_mb": 8.0, "peak_mem_evaluate_mb": 4.0, "peak_mem_kind": "cpu-rss",
        "time_to_target_iters": math.nan, "cost_carried": False, "n_ua": 100, "n_per_class": 100,
        "classifier_test_acc": 0.98, "fid_n_ref": 1295, "device": "cpu test", "setup_s": 0.0,
    })
    row.update(extra)
    return row


def _col(table, prefix):
    return [c for c in table.columns if c.startswith(prefix)][0]


def _by_label(table, label):
    rows = table[table["method"] == label]
    assert len(rows) == 1, list(table["method"])
    return rows.iloc[0]


# --- aggregation -------------------------------------------------------------------------------------
def test_aggregate_reports_the_mean_and_sample_std_not_the_last_value():
    df = pd.DataFrame([_row("salun", 0, 0.8, 10.0, 3.0), _row("salun", 1, 0.9, 12.0, 5.0),
                       _row("salun", 2, 1.0, 14.0, 7.0), _row("original", 0, 0.0, 1.0, 0.0, ref=True)])
    table = aggregate(df)
    assert list(table["method"]) == ["original", "salun"]  # reference rows first
    salun = table[table["method"] == "salun"].iloc[0]
    assert salun["UA ↑"] == "0.900 ± 0.100"
    fid_col = _col(table, "FID")
    assert "task-classifier" in fid_col and "n=900" in fid_col
    assert salun[fid_col] == "12.00 ± 2.00"
    assert salun["time (s) ↓"] == "5.0 ± 2.0"
    assert salun["cells"] == 3
    # an older folder: peak_mem_mb (absolute) is used when peak_mem_unlearn_mb is missing, and said so
    mem_col = _col(table, "peak mem")
    assert salun[mem_col] == "100 ± 0" and "absolute" in mem_col
    md = to_markdown(table)
    assert "*original*" in md and "**salun**" in md
    tex = to_latex(table, "caption_with_underscore")
    assert r"$\pm$" in tex and r"caption\_with\_underscore" in tex and r"\midrule" in tex


def test_new_columns_peak_mem_delta_and_iters_to_target():
    rows = [_new_row("ga", 0, 0, 1.0, time_to_target_s=2.0, time_to_target_steps=18, time_to_target_iters=18,
                     peak_mem_unlearn_mb=60.0),
            _new_row("ga", 0, 1, 1.0, time_to_target_s=4.0, time_to_target_steps=36, time_to_target_iters=36,
                     peak_mem_unlearn_mb=80.0)]
    table = aggregate(pd.DataFrame(rows))
    ga = table.iloc[0]
    mem_col = _col(table, "peak mem")
    assert mem_col == "peak mem Δ unlearn (MiB, CPU RSS above phase start) ↓"
    assert ga[mem_col] == "70 ± 14"  # mean 70, sd sqrt(200) = 14.1
    assert ga["iters to UA≥0.9 ↓"] == "27 ± 13"  # mean 27, sd sqrt(162) = 12.7
    assert ga["steps to UA≥0.9 ↓"] == "27 ± 13"
    cuda = aggregate(pd.DataFrame([dict(r, peak_mem_kind="cuda-allocated") for r in rows]))
    assert _col(cuda, "peak mem") == "peak mem Δ unlearn (MiB, CUDA allocated above phase start) ↓"


def test_partial_time_to_target_is_marked():
    rows = [_row("ga", 0, 1.0, 5.0, 1.0), _row("ga", 1, 1.0, 5.0, 1.0)]
    rows[0]["time_to_target_s"] = 2.0
    table = aggregate(pd.DataFrame(rows))
    col = _col(table, "time to UA")
    assert table.iloc[0][col] == "2.0 (1/2)"


def test_time_to_target_takes_the_first_point_reaching_it_in_iteration_order():
    curve = [{"iter": 0, "ua": 0.1, "unlearn_s": 0.0, "grad_steps": 0},
             {"iter": 20, "ua": 0.95, "unlearn_s": 2.5, "grad_steps": 20},
             {"iter": 40, "ua": 0.99, "unlearn_s": 5.0, "grad_steps": 40},
             {"iter": 12, "ua": 0.93, "unlearn_s": 1.6, "grad_steps": 12, "kind": "refine"}]  # appended last
    assert time_to_target(curve, 0.9) == {"s": 1.6, "steps": 12.0, "iters": 12.0}
    assert all(math.isnan(v) for v in time_to_target(curve, 0.999).values())


def test_sanity_warnings_flag_a_miscalibrated_original_and_retrain():
    df = pd.DataFrame([_row("original", 0, 0.7, 1.0, 0.0, True), _row("retrain", 0, 0.3, 1.0, 1.0, True)])
    warns = sanity_warnings(df)
    assert len(warns) == 2 and "mis-calibrated" in warns[0]
    ok = pd.DataFrame([_row("original", 0, 0.0, 1.0, 0.0, True), _row("retrain", 0, 0.99, 1.0, 1.0, True)])
    assert sanity_warnings(ok) == []


# --- one row per (method, config, code version) -------------------------------------------------
def test_a_set_override_gets_its_own_row_and_leaves_the_default_mean_alone():
    low = dict(SALUN_CFG, lr=1e-5)
    rows = [_new_row("original", 0, 0, 0.0, ref=True, cfg={"iters": 0}),
            _new_row("salun", 0, 0, 0.8), _new_row("salun", 0, 1, 0.9), _new_row("salun", 0, 2, 1.0),
            _new_row("salun", 0, 0, 0.1, cfg=low, overrides={"lr": 1e-5}),
            _new_row("salun", 0, 1, 0.2, cfg=low, overrides={"lr": 1e-5}),
            _new_row("ga", 0, 0, 1.0, cfg={"iters": 150})]
    table = aggregate(pd.DataFrame(rows))
    assert list(table["method"]) == ["original", "ga", "salun", "salun (lr=1e-05)"]
    default = _by_label(table, "salun")
    assert default["cells"] == 3 and default["UA ↑"] == "0.900 ± 0.100"  # 0.8, 0.9, 1.0 only
    other = _by_label(table, "salun (lr=1e-05)")
    assert other["cells"] == 2 and other["UA ↑"] == "0.150 ± 0.071"  # 0.1, 0.2: sd = 0.1/sqrt(2)
    assert code_warnings(pd.DataFrame(rows)) == []
    tex = to_latex(table, "c")
    assert r"salun (lr=1e-05) & 2 &" in tex


def test_without_a_default_group_the_largest_keeps_the_name_and_steps_overrides_show():
    a = dict(SALUN_CFG, lr=1e-5)
    b = dict(SALUN_CFG, lr=1e-5, iters=300)
    rows = [_new_row("salun", 0, s, 0.5, cfg=a, overrides={"lr": 1e-5}) for s in range(3)]
    rows += [_new_row("salun", 0, s, 0.7, cfg=b, overrides={"lr": 1e-5, "iters": 300}) for s in range(2)]
    labels = group_labels(pd.DataFrame(rows))
    assert list(labels) == ["salun"] * 3 + ["salun (iters=300)"] * 2


def test_older_rows_without_group_columns_form_one_row():
    rows = [_row("salun", s, 0.9, 1.0, 1.0) for s in range(3)]
    rows[1]["config_hash"] = math.nan
    assert list(aggregate(pd.DataFrame(rows))["method"]) == ["salun"]


def test_cells_of_different_data_unet_or_precision_never_share_a_row():
    """A folder holding cells of two data copies (or U-Nets, or precisions) gives each its own table row,
    labelled by the setting that differs; the means never pool them."""
    rows = [_new_row("salun", 0, s, 0.9) for s in range(2)] + [_new_row("salun", 0, s, 0.3) for s in range(2)]
    for r in rows[:2]:
        r.update(dataset_variant="cifar10-official", unet_arch="reference-unet", compute_precision="fp32")
    for r in rows[2:]:
        r.update(dataset_variant="cifar10-jpeg75", unet_arch="reference-unet", compute_precision="fp32")
    table = aggregate(pd.DataFrame(rows))
    assert _by_label(table, "salun [data cifar10-official]")["UA ↑"] == "0.900 ± 0.000"
    assert _by_label(table, "salun [data cifar10-jpeg75]")["UA ↑"] == "0.300 ± 0.000"
    for r in rows[2:]:
        r.update(dataset_variant="cifar10-official", unet_arch="diffusers-unet", compute_precision="bf16")
    labels = group_labels(pd.DataFrame(rows))
    assert list(labels) == ["salun [unet reference-unet, precision fp32]"] * 2 + \
        ["salun [unet diffusers-unet, precision bf16]"] * 2


def test_concept_drift_columns_appear_only_with_values():
    rows = [_new_row("esd", 0, s, 0.9, fid_vs_original=v, style_shift_forget=0.4, style_shift_remain=0.1)
            for s, v in enumerate((2.0, 4.0))]
    table = aggregate(pd.DataFrame(rows))
    assert _by_label(table, "esd")[_col(table, "FID vs original")] == "3.00 ± 1.41"
    assert "style shift, forget ↑" in table.columns and "style shift, remain ↓" in table.columns
    plain = aggregate(pd.DataFrame([_new_row("esd", 0, 0, 0.9, fid_vs_original=math.nan)]))
    assert not [c for c in plain.columns if c.startswith(("FID vs original", "style shift"))]


def test_a_code_version_split_is_labelled_and_warned_about(tmp_path, capsys):
    rows = [_new_row("original", 0, 0, 0.0, ref=True, cfg={"iters": 0}, method_code="o" * 12),
            _new_row("salun", 0, 0, 0.9, method_code="3f2a1c000000"),
            _new_row("salun", 0, 1, 0.9, method_code="3f2a1c000000"),
            _new_row("salun", 0, 0, 0.5, method_code="9e8d7c111111")]
    labels = group_labels(pd.DataFrame(rows))
    assert list(labels) == ["original", "salun [code 3f2a1c]", "salun [code 3f2a1c]", "salun [code 9e8d7c]"]
    warns = code_warnings(pd.DataFrame(rows))
    assert len(warns) == 1 and "mixes code versions of salun" in warns[0]
    tex = to_latex(aggregate(pd.DataFrame(rows)), "c")
    assert "salun {[}code 3f2a1c{]}" in tex  # brackets must not read as \\[...] optional arguments

    for r in rows:  # through render: row.json files only (no curves, no samples)
        d = tmp_path / TASK / "runs" / r["cell"]
        d.mkdir(parents=True)
        (d / "row.json").write_text(json.dumps(r))
    md = render(tmp_path / TASK)
    err = capsys.readouterr().err
    assert "mixed code versions" in md and "mixes code versions of salun" in md
    assert "WARNING" in err and "mixes code versions of salun" in err
    assert "| **salun [code 3f2a1c]** | 2 |" in md and "| **salun [code 9e8d7c]** | 1 |" in md
    summary = json.loads((tmp_path / TASK / "summary.json").read_text())
    assert set(summary["fast"]) == {"original", "salun [code 3f2a1c]", "salun [code 9e8d7c]"}


def test_a_harness_code_mix_across_methods_is_warned_about():
    rows = [_new_row("ga", 0, 0, 1.0, harness_code="aaaaaa000000"), _new_row("rl", 0, 0, 1.0,
                                                                             harness_code="bbbbbb000000")]
    warns = code_warnings(pd.DataFrame(rows))
    assert len(warns) == 1 and "harness code" in warns[0] and "aaaaaa" in warns[0] and "bbbbbb" in warns[0]


def test_latex_escapes_new_labels():
    table = pd.DataFrame([{"method": "sfron (mask_scope=all)", "reference": False, "x ≤ 1": "a|b & c_d"},
                          {"method": "pecker [code 3f2a1c]", "reference": False, "x ≤ 1": "{~}"}])
    tex = to_latex(table, "50% of #1, $x$")
    assert r"sfron (mask\_scope=all)" in tex and r"pecker {[}code 3f2a1c{]}" in tex
    assert r"a\textbar{}b \& c\_d" in tex and r"\{\textasciitilde{}\}" in tex and r"x $\leq$ 1" in tex
    assert r"50\% of \#1, \$x\$" in tex


# --- where the spread comes from -----------------------------------------------------------------
def _spread_rows():
    # salun, 3 base models (b) x up to 3 unlearning seeds (s):
    #   UA    b0: 0.80, 0.90        mean 0.85  within var ((0.05)^2 + (0.05)^2)/1 = 0.005
    #         b1: 0.70, 0.70, 0.76  mean 0.72  within var (0.02^2 + 0.02^2 + 0.04^2)/2 = 0.0012
    #         b2: 0.96              mean 0.96  (one seed: no within variance)
    #   sd over base models = sd(0.85, 0.72, 0.96) = sqrt(0.0288667 / 2) = 0.1201
    #   sd over seeds = sqrt((0.005 + 0.0012) / 2) = sqrt(0.0031) = 0.0557
    #   time to target: b0: 2, 4 (mean 3, var 2); b1: 5, never, 7 (mean 6, var 2); b2: never (left out)
    #   sd over base models = sd(3, 6) = 3/sqrt(2) = 2.12; sd over seeds = sqrt((2 + 2)/2) = 1.41
    #   FID: b0: 1, 1; b1: 2, 2, 2; b2: 3 -> sd(1, 2, 3) = 1.00 over base models, 0.00 over seeds
    nan = math.nan
    cells = [(0, 0, 0.80, 2.0, 1.0), (0, 1, 0.90, 4.0, 1.0), (1, 0, 0.70, 5.0, 2.0), (1, 1, 0.70, nan, 2.0),
             (1, 2, 0.76, 7.0, 2.0), (2, 0, 0.96, nan, 3.0)]
    rows = [_new_row("salun", b, s, ua, time_to_target_s=t, fid=f) for b, s, ua, t, f in cells]
    # ft: one base model, two seeds: UA 0.1, 0.3 -> no between-base sd, within sd 0.1414
    rows += [_new_row("ft", 0, 0, 0.1, cfg={"iters": 300}), _new_row("ft", 0, 1, 0.3, cfg={"iters": 300})]
    return rows


def test_spread_decomposition_matches_a_hand_computation():
    table = spread_table(pd.DataFrame(_spread_rows()))
    salun, ft = _by_label(table, "salun"), _by_label(table, "ft")
    assert salun[_col(table, "UA")] == "0.120 / 0.056"
    assert salun[_col(table, "time to UA")] == "2.1 / 1.4"
    assert salun[_col(table, "FID")] == "1.00 / 0.00"
    assert salun["base models"] == 3 and salun["seeds"] == 3
    assert ft[_col(table, "UA")] == "– / 0.141"
    assert "sd over base models / over seeds" in _col(table, "UA")


def test_spread_pools_forget_classes_instead_of_mixing_them_into_the_seed_sd():
    # class 0: b0 0.1, 0.3 (var 0.02); b1 0.5, 0.7 (var 0.02); means 0.2, 0.6 -> between var 0.08
    # class 1: b0 0.9, 0.9; b1 0.9, 0.9 -> var 0, between var 0
    # seed sd = sqrt((0.02 + 0.02 + 0 + 0) / 4) = 0.1; base sd = sqrt((0.08 + 0) / 2) = 0.2
    vals = {(0, 0, 0): 0.1, (0, 0, 1): 0.3, (0, 1, 0): 0.5, (0, 1, 1): 0.7,
            (1, 0, 0): 0.9, (1, 0, 1): 0.9, (1, 1, 0): 0.9, (1, 1, 1): 0.9}
    rows = [_new_row("ga", b, s, ua, forget_class=c) for (c, b, s), ua in vals.items()]
    table = spread_table(pd.DataFrame(rows))
    assert table.iloc[0][_col(table, "UA")] == "0.200 / 0.100"


def test_render_writes_the_spread_table_caption_and_summary(tmp_path):
    for r in _spread_rows():
        d = tmp_path / TASK / "runs" / r["cell"]
        d.mkdir(parents=True)
        (d / "row.json").write_text(json.dumps(r))
    md = render(tmp_path / TASK, quiet=True)
    assert "Where the spread comes from" in md and "| **salun** | 3 | 3 | 0.120 / 0.056 |" in md
    assert "base models (base seeds) [0, 1, 2], unlearning seeds [0, 1, 2]" in md
    tex = (tmp_path / TASK / "table.tex").read_text()
    # main table, 95% intervals (salun has 6 cells), where the spread comes from
    assert tex.count(r"\begin{tabular}") == 3 and "0.120 / 0.056" in tex
    spread = json.loads((tmp_path / TASK / "summary.json").read_text())["fast"]["salun"]["spread"]
    assert spread["ua"]["sd_over_base_models"] == pytest.approx(0.12014, abs=1e-4)
    assert spread["ua"]["sd_over_unlearning_seeds"] == pytest.approx(math.sqrt(0.0031), abs=1e-6)
    assert spread["time_to_target_s"]["sd_over_base_models"] == pytest.approx(3 / math.sqrt(2))


def test_one_base_model_has_no_spread_table(tmp_path):
    for r in _spread_rows()[:2]:
        d = tmp_path / TASK / "runs" / r["cell"]
        d.mkdir(parents=True)
        (d / "row.json").write_text(json.dumps(r))
    assert "Where the spread comes from" not in render(tmp_path / TASK, quiet=True)


# --- failures --------------------------------------------------------------------------------------
def _failure(tmp_path, cell="salun-f0-b1-s2-fast-abc"):
    write_failure(tmp_path, TASK, cell, {
        "cell": cell, "method": "salun", "forget_class": 0, "seed": 2, "base_seed": 1, "profile": "fast",
        "error": "RuntimeError: boom\nsecond line", "traceback": "Traceback ...", "created": "2026-01-01T00:00:00"})


def test_failures_render_without_completed_runs_and_next_to_them(tmp_path):
    with pytest.raises(BenchError, match="no completed runs"):
        render(tmp_path / TASK)
    _failure(tmp_path)
    md = render(tmp_path / TASK, quiet=True)
    assert "No completed runs yet" in md and "## Failures" in md
    assert "| salun | 0 | 1 | 2 | fast | RuntimeError: boom |" in md and "second line" not in md
    summary = json.loads((tmp_path / TASK / "summary.json").read_text())
    assert summary["failures"][0]["method"] == "salun" and summary["failures"][0]["base_seed"] == 1

    r = _new_row("ga", 0, 0, 1.0)
    d = tmp_path / TASK / "runs" / r["cell"]
    d.mkdir(parents=True)
    (d / "row.json").write_text(json.dumps(r))
    md = render(tmp_path / TASK, quiet=True)
    assert "| **ga** |" in md and "| salun | 0 | 1 | 2 | fast | RuntimeError: boom |" in md
    summary = json.loads((tmp_path / TASK / "summary.json").read_text())
    assert "ga" in summary["fast"] and len(summary["failures"]) == 1


# --- plots and sample grids, from cells written by the store ----------------------------------------
def _curve(fids, uas, refine=()):
    pts = [{"iter": 10 * k, "unlearn_s": 0.5 * k, "grad_steps": 10 * k, "backward_passes": 10 * k, "kind": "probe",
            "ua": ua, "fid": fid} for k, (ua, fid) in enumerate(zip(uas, fids))]
    pts += [{"iter": it, "unlearn_s": it / 20, "grad_steps": it, "backward_passes": it, "kind": "refine", "ua": ua,
             "fid": math.nan} for it, ua in refine]
    return pts


def _write(tmp_path, row, curve):
    imgs = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0] * 10 + [1] * 10)
    write_cell(tmp_path / TASK / "runs" / row["cell"], row, {}, curve, [], imgs, labels,
               title=f"{row['method']}: forget class 0, base seed {row['base_seed']}, seed {row['seed']}")


def test_render_plots_a_fid_blow_up_and_zero_or_negative_fid(tmp_path):
    ga = dict(SALUN_CFG, forget="ga")
    _write(tmp_path, _new_row("original", 0, 0, 0.0, ref=True, cfg={"iters": 0}), [])
    for b, s in ((1, 0), (0, 10), (0, 2)):  # the grid must come from (base 0, seed 2), not the first folder (s10)
        _write(tmp_path, _new_row("ga", b, s, 1.0, cfg=ga),
               _curve([0.5, 80.0, 900.0, 400.0], [0.0, 1.0, 1.0, 1.0], refine=[(5, 0.4), (7, 0.95)]))
    _write(tmp_path, _new_row("salun", 0, 0, 1.0), _curve([0.4, 0.0, -0.003, 0.2], [0.0, 0.5, 0.95, 1.0]))
    _write(tmp_path, _new_row("salun", 0, 0, 0.3, cfg=dict(SALUN_CFG, lr=1e-5), overrides={"lr": 1e-5}),
           _curve([0.4, 0.3, 0.2, 0.1], [0.0, 0.1, 0.2, 0.3]))
    _write(tmp_path, _new_row("ga", 0, 0, 1.0, cfg=ga, profile="smoke"), _curve([0.5, 50.0], [0.0, 1.0]))
    render(tmp_path / TASK, overlays=(("ga", "salun"),), quiet=True)
    t = tmp_path / TASK
    for name in ("curves.png", "curves_smoke.png", "overlay_ga_salun.png", "runs.csv", "table.md", "table.tex",
                 "samples/ga.png", "samples/salun.png", "samples/salun_lr=1e-05.png", "samples/ga_smoke.png",
                 "samples/original.png"):
        assert (t / name).is_file(), name
    src = t / "runs" / _new_row("ga", 0, 2, 1.0, cfg=ga)["cell"] / "samples.png"
    assert (t / "samples" / "ga.png").read_bytes() == src.read_bytes()


def test_fid_panel_is_log_scale_with_hollow_floor_markers_and_ua_uses_refine_points(monkeypatch, tmp_path):
    import matplotlib.figure

    figs = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figs.append(self))
    curves = pd.DataFrame(_curve([0.4, 0.0, -0.003, 0.2, 800.0], [0.0, 0.5, 0.95, 1.0, 1.0],
                                 refine=[(15, 0.7), (25, 0.97)]))
    curves["method"], curves["label"], curves["base_seed"], curves["seed"], curves["forget_class"] = "ga", "ga", 0, 0, 0
    plot_curves(curves.sample(frac=1.0, random_state=0), tmp_path / "c.png", target=0.9)  # shuffled on purpose
    ua_ax, fid_ax = figs[0].axes[0], figs[0].axes[2]
    assert fid_ax.get_yscale() == "log" and "0.01" in fid_ax.get_ylabel()
    ua_line = max(ua_ax.get_lines(), key=lambda ln: len(ln.get_xdata()))
    # 5 probes + 2 bisection probes on one line, in iteration order (x = seconds = iter / 20)
    assert list(ua_line.get_xdata()) == [0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    assert list(ua_line.get_ydata()) == [0.0, 0.5, 0.7, 0.95, 0.97, 1.0, 1.0]
    hollow = [ln for ln in fid_ax.get_lines() if ln.get_markerfacecolor() == "none" and len(ln.get_xdata())]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [0.5, 1.0]  # FID 0.0 and -0.003
    assert list(hollow[0].get_ydata()) == [0.01, 0.01]
    fid_line = max(fid_ax.get_lines(), key=lambda ln: len(ln.get_xdata()))
    assert list(fid_line.get_xdata()) == [0.0, 0.5, 1.0, 1.5, 2.0]  # probes only, refine points have no FID


# --- 95% intervals, per forget class, machine-readable tables ---------------------------------------------
def test_interval_matches_a_hand_computation():
    # 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.3027 -> 2 ± 4.3027 / sqrt(3) = 2 ± 2.4841
    st = interval([1.0, 2.0, 3.0])
    assert st["mean"] == 2.0 and st["sd"] == 1.0 and st["n"] == 3
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert st["ci95_lo"] == pytest.approx(-0.4841, abs=1e-4) and st["ci95_hi"] == pytest.approx(4.4841, abs=1e-4)
    # missing values ("nan" as row.json stores it, None, NaN) are left out; fewer than 3 values: no interval
    two = interval([1.0, "nan", None, math.nan, 3.0])
    assert two["n"] == 2 and two["mean"] == 2.0 and math.isnan(two["ci95_lo"]) and math.isnan(two["ci95_hi"])
    assert interval([5.0])["n"] == 1 and math.isnan(interval([5.0])["sd"])
    assert interval([])["n"] == 0 and math.isnan(interval([])["mean"])


def _write_rows(tmp_path, rows):
    for r in rows:
        d = tmp_path / TASK / "runs" / r["cell"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "row.json").write_text(json.dumps(r))


def test_intervals_table_csv_and_summary(tmp_path):
    # salun UA 0.8, 0.9, 1.0: mean 0.9, sd 0.1, half width 4.3027 * 0.1 / sqrt(3) = 0.2484
    # time to target 2, 4, never: n = 2 -> no interval; ga has 2 cells -> no interval at all
    rows = [_new_row("salun", 0, s, ua, time_to_target_s=t, fid=f, time_to_target_steps=10 * (s + 1))
            for s, ua, t, f in ((0, 0.8, 2.0, 1.0), (1, 0.9, 4.0, 2.0), (2, 1.0, math.nan, 3.0))]
    rows += [_new_row("ga", 0, s, 1.0, cfg={"iters": 1}) for s in range(2)]
    table = intervals_table(pd.DataFrame(rows))
    salun, ga = _by_label(table, "salun"), _by_label(table, "ga")
    assert salun[_col(table, "UA")] == "[0.652, 1.148]"
    assert salun[_col(table, "FID")] == "[-0.48, 4.48]"  # 1, 2, 3: the hand example
    assert salun[_col(table, "time to UA")] == "–"  # 2 values
    assert salun[_col(table, "steps to UA")] == "[-5, 45]"  # 10, 20, 30: 20 ± 4.3027 * 10 / sqrt(3)
    assert ga[_col(table, "UA")] == "–"
    _write_rows(tmp_path, rows)
    md = render(tmp_path / TASK, quiet=True)
    assert "### 95% intervals" in md and "| **salun** | 3 | [0.652, 1.148] |" in md
    st = pd.read_csv(tmp_path / TASK / "table.csv")
    s = st[st["label"] == "salun"].iloc[0]
    assert s["profile"] == "fast" and s["cells"] == 3 and s["ua_n"] == 3
    assert s["ua_mean"] == pytest.approx(0.9) and s["ua_sd"] == pytest.approx(0.1)
    assert s["ua_ci95_lo"] == pytest.approx(0.9 - 0.24841, abs=1e-5)
    assert s["ua_ci95_hi"] == pytest.approx(0.9 + 0.24841, abs=1e-5)
    assert s["time_to_target_s_n"] == 2 and math.isnan(s["time_to_target_s_ci95_lo"])
    for col in ("ua", "retain_acc", "fid", "kid", "unlearn_s", "grad_steps", "peak_mem_unlearn_mb",
                "time_to_target_steps"):
        assert {f"{col}_{k}" for k in ("mean", "sd", "n", "ci95_lo", "ci95_hi")} <= set(st.columns), col
    assert {"config_hash", "harness_code", "method_code", "reference", "method"} <= set(st.columns)
    summary = json.loads((tmp_path / TASK / "summary.json").read_text())["fast"]
    assert summary["salun"]["ci95"]["fid"] == pytest.approx([2 - 2.48414, 2 + 2.48414], abs=1e-4)
    assert summary["ga"]["ci95"]["ua"] is None and summary["salun"]["n"]["time_to_target_s"] == 2
    tex = (tmp_path / TASK / "table.tex").read_text()
    assert "95\\% intervals" in tex and "{[}0.652, 1.148{]}" in tex


def test_an_interval_over_some_of_the_cells_says_how_many():
    # time to target 2, 3, 4 and never: the interval is over 3 of the 4 cells, 3 ± 4.3027 / sqrt(3) = 3 ± 2.48
    rows = [_new_row("ga", 0, s, 1.0, time_to_target_s=t) for s, t in enumerate((2.0, 3.0, 4.0, math.nan))]
    table = intervals_table(pd.DataFrame(rows))
    assert table.iloc[0][_col(table, "time to UA")] == "[0.5, 5.5] (3/4)"


def test_no_intervals_table_when_no_row_has_three_values(tmp_path):
    _write_rows(tmp_path, [_new_row("ga", 0, s, 1.0) for s in range(2)])
    md = render(tmp_path / TASK, quiet=True)
    assert "95% intervals" not in md.replace("(95% intervals: Student t", "")


def test_per_forget_class_table_with_two_classes(tmp_path):
    # ga: class 0 UA 1.0, 0.8 (mean 0.9), FID 0.5, 0.7 (0.6); class 3 UA 0.6 (one cell), FID 2.0
    rows = [_new_row("ga", 0, 0, 1.0, fid=0.5, forget_class=0), _new_row("ga", 0, 1, 0.8, fid=0.7, forget_class=0),
            _new_row("ga", 0, 0, 0.6, fid=2.0, forget_class=3),
            _new_row("original", 0, 0, 0.0, ref=True, cfg={"iters": 0}, fid=0.2, forget_class=0)]
    for r in rows:
        r["cell"] = r["cell"].replace("-f0-", f"-f{r['forget_class']}-")
    table = by_class_table(pd.DataFrame(rows))
    assert list(table.columns) == ["method", "reference", "cells", "class 0", "class 3"]
    assert _by_label(table, "ga")["class 0"] == "0.900 / 0.60" and _by_label(table, "ga")["class 3"] == "0.600 / 2.00"
    assert _by_label(table, "original")["class 3"] == "–"
    _write_rows(tmp_path, rows)
    md = render(tmp_path / TASK, quiet=True)
    assert "### Per forget class" in md and "| **ga** | 3 | 0.900 / 0.60 | 0.600 / 2.00 |" in md
    assert "| *original* | 1 | 0.000 / 0.20 | – |" in md
    tex = (tmp_path / TASK / "table.tex").read_text()
    assert "Per forget class" in tex and "0.900 / 0.60 & 0.600 / 2.00" in tex
    bc = pd.read_csv(tmp_path / TASK / "table_by_class.csv")
    g3 = bc[(bc["label"] == "ga") & (bc["forget_class"] == 3)].iloc[0]
    assert g3["cells"] == 1 and g3["ua_mean"] == pytest.approx(0.6) and g3["ua_n"] == 1
    summary = json.loads((tmp_path / TASK / "summary.json").read_text())["fast"]["ga"]["by_forget_class"]
    assert summary["0"] == {"cells": 2, "ua": pytest.approx(0.9), "fid": pytest.approx(0.6)}
    # one forget class: no per-class table
    one = tmp_path / "one"
    _write_rows(one, rows[:2])
    assert "Per forget class" not in render(one / TASK, quiet=True)


def test_caption_has_the_evaluation_settings_and_the_data_variant():
    rows = [_new_row("ga", 0, 0, 1.0, dataset_variant="sklearn-digits-8x8", n_per_class=100),
            _new_row("sfd", 0, 0, 1.0, cfg={"iters": 2}, sampler="one-step", sampler_steps=1, guidance_w=0.0)]
    md_caption = _caption_of(rows)
    for needle in ("data sklearn-digits-8x8", "Sampling: ddim, 25 steps, guidance w=0.5 (except sfd: one-step, "
                   "1 step, guidance w=0.0)", "UA from 100 forget-class samples", "retain acc from 100 samples per "
                   "remaining class", "FID on task-classifier features (torch-fidelity), 900 generated vs 1295 real",
                   "times on cpu test"):
        assert needle in md_caption, needle


def _caption_of(rows):
    from bench.reports.captions import _caption

    return _caption(TASK, "fast", pd.DataFrame(rows))


# --- long-form storage ---------------------------------------------------------------------------------------
def test_metrics_long_has_one_row_per_cell_and_metric_with_directions_and_settings(tmp_path):
    rows = [_new_row("salun", 0, 0, 0.9, time_to_target_s=2.0, acc_f=0.1, entropy_f=0.3, relearn_steps=40,
                     dataset_variant="sklearn-digits-8x8"),
            _new_row("ft", 1, 2, 0.1, cfg={"iters": 3}, time_to_target_s="nan", dataset_variant="sklearn-digits-8x8")]
    _write_rows(tmp_path, rows)
    render(tmp_path / TASK, quiet=True)
    long = pd.read_csv(tmp_path / TASK / "metrics_long.csv", keep_default_na=False)
    assert list(long.columns[:13]) == ["cell", "task", "method", "forget_class", "base_seed", "seed", "profile",
                                       "config_hash", "harness_code", "method_code", "metric", "value", "direction"]
    for col in ("fid_backend", "fid_features", "fid_n_gen", "fid_n_ref", "n_ua", "sampler", "sampler_steps",
                "guidance_w", "dataset_variant", "device"):
        assert col in long.columns, col
    assert not long.duplicated(["cell", "metric"]).any()

    def one(cell, metric):
        r = long[(long["cell"] == cell) & (long["metric"] == metric)]
        assert len(r) == 1, (cell, metric)
        return r.iloc[0]

    salun, ft = rows[0]["cell"], rows[1]["cell"]
    assert one(salun, "ua")["direction"] == "higher" and float(one(salun, "ua")["value"]) == 0.9
    assert one(salun, "fid")["direction"] == "lower" and one(salun, "acc_f")["direction"] == "lower"
    assert one(salun, "entropy_f")["direction"] == "none" and one(salun, "relearn_steps")["direction"] == "none"
    for cost in ("unlearn_s", "grad_steps", "backward_passes", "nfe", "peak_mem_unlearn_mb", "time_to_target_s"):
        assert one(salun, cost)["direction"] == "lower", cost
    assert one(ft, "time_to_target_s")["value"] == ""  # recorded as missing (never reached): kept, empty
    assert len(long[(long["cell"] == ft) & (long["metric"] == "relearn_steps")]) == 0  # not measured: absent
    r = one(ft, "retain_acc")
    assert (r["method"], r["base_seed"], r["seed"], r["forget_class"], r["profile"]) == ("ft", 1, 2, 0, "fast")
    assert (r["fid_backend"], r["fid_features"], r["fid_n_gen"], r["sampler"], r["sampler_steps"]) == (
        "torch-fidelity", "task-classifier", 900, "ddim", 25)
    assert r["dataset_variant"] == "sklearn-digits-8x8" and r["device"] == "cpu test"
    assert r["config_hash"] == rows[1]["config_hash"] and r["method_code"] == rows[1]["method_code"]
    # rebuilding a table from it needs no new runs: mean UA per method
    ua = long[long["metric"] == "ua"].assign(v=lambda d: d["value"].astype(float)).groupby("method")["v"].mean()
    assert ua.to_dict() == {"ft": pytest.approx(0.1), "salun": pytest.approx(0.9)}


# --- the incremental reporter ----------------------------------------------------------------------------------
def test_reporter_update_reads_only_new_cells(monkeypatch, tmp_path):
    import bench.core.store

    reads = []
    real = bench.core.store.load_row
    monkeypatch.setattr(bench.core.store, "load_row", lambda folder: reads.append(folder.name) or real(folder))
    t = tmp_path / TASK
    rep = Reporter(t)
    assert rep.update() == "" and not t.exists()  # nothing yet: nothing written
    rows = [_new_row("ga", 0, s, 1.0) for s in range(3)]
    _write_rows(tmp_path, rows)
    md = rep.update()
    assert sorted(reads) == sorted(r["cell"] for r in rows) and "| **ga** | 3 |" in md
    for name in ("runs.csv", "metrics_long.csv", "table.md", "table.tex", "table.csv", "summary.json"):
        assert (t / name).is_file(), name
    assert not (t / "report.html").exists() and not (t / "curves.png").exists()  # update: text only
    reads.clear()
    assert rep.update() == md and reads == []  # nothing new: nothing read
    late = _new_row("ga", 0, 3, 0.5)
    _write_rows(tmp_path, [late])
    md = rep.update()
    assert reads == [late["cell"]] and "| **ga** | 4 |" in md
    assert len(pd.read_csv(t / "runs.csv")) == 4
    # a cell rewritten in place (--no-resume: a new folder renamed over the old one) is read again
    reads.clear()
    old = t / "runs" / late["cell"]
    tmp = t / "runs" / f".{late['cell']}.tmp"
    tmp.mkdir()
    (tmp / "row.json").write_text(json.dumps(dict(late, ua=1.0)))
    shutil.rmtree(old)
    os.replace(tmp, old)
    md = rep.update()
    assert reads == [late["cell"]] and "| **ga** | 4 | 1.000 ± 0.000 |" in md
    # a removed cell disappears from the tables; the same text as a full render
    shutil.rmtree(t / "runs" / rows[0]["cell"])
    md = rep.update()
    assert "| **ga** | 3 |" in md
    assert md == render(t, quiet=True)


def test_reporter_matches_render_and_finish_writes_everything(tmp_path):
    t = tmp_path / TASK
    rep = Reporter(t)
    rows = _spread_rows()
    for r in rows[:4]:
        _write(tmp_path, r, _curve([0.5, 0.4], [0.0, 1.0]))
    rep.update()
    for r in rows[4:]:
        _write(tmp_path, r, _curve([0.5, 0.4], [0.0, 1.0]))
    md = rep.update()
    texts = {n: (t / n).read_text() for n in ("runs.csv", "metrics_long.csv", "table.md", "table.tex", "table.csv",
                                              "table_spread.csv", "summary.json")}
    assert md == rep.finish(quiet=True)
    for name in ("report.html", "curves.png", "quality_forgetting.png", "samples/salun.png", "samples/ft.png"):
        assert (t / name).is_file(), name
    render(t, quiet=True)  # the full render from scratch writes the same text outputs
    for name, text in texts.items():
        assert (t / name).read_text() == text, name


def test_every_report_file_is_written_through_a_temporary_and_os_replace(monkeypatch, tmp_path):
    import os as _os

    replaced = []
    real = _os.replace
    monkeypatch.setattr(_os, "replace", lambda src, dst: replaced.append(Path(dst).relative_to(tmp_path / TASK))
                        or real(src, dst))
    _write(tmp_path, _new_row("ga", 0, 0, 1.0), _curve([0.5, 80.0], [0.0, 1.0]))
    _write(tmp_path, _new_row("salun", 0, 0, 1.0), _curve([0.4, 0.2], [0.0, 1.0]))
    replaced.clear()
    render(tmp_path / TASK, overlays=(("ga", "salun"),), quiet=True)
    t = tmp_path / TASK
    written = {p.relative_to(t) for p in t.rglob("*") if p.is_file() and "runs" not in p.parts}
    assert written == set(replaced)  # every output file arrived by os.replace
    assert {Path(n) for n in ("curves.png", "overlay_ga_salun.png", "quality_forgetting.png", "samples/ga.png",
                              "report.html", "table.md", "runs.csv", "metrics_long.csv")} <= written
    assert not [p for p in t.rglob(".*")]  # no temporary file left behind
