from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from bench.driver import time_to_target
from bench.errors import BenchError
from bench.hashing import content_hash
from bench.plots import plot_curves
from bench.report import (
    aggregate,
    code_warnings,
    group_labels,
    render,
    sanity_warnings,
    spread_table,
    to_latex,
    to_markdown,
)
from bench.store import write_cell, write_failure

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
    assert tex.count(r"\begin{tabular}") == 2 and "0.120 / 0.056" in tex
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
