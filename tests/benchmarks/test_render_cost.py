"""Report cost of "one more cell finished": the full ``render`` (what ``bench run`` called after every cell) against
``Reporter.update()`` (reads only the new cell, rewrites the text outputs), at 30, 100 and 300 finished cells.

The results folder is synthetic: one real cell folder of ``results/digits-class/runs`` copied once per cell with
its ``row.json`` rewritten (method among the 11 bundled names, base seed, seed, cell name, perturbed metrics).
Run with ``tox -e bench`` (or ``pytest tests/benchmarks/test_render_cost.py --benchmark-enable -s``); the table is
printed and stored in the benchmark's ``extra_info``. Never asserted: timings on a shared machine are
measurements, not test outcomes. With benchmarks disabled (the normal test run) it only runs the smallest size
once, as a smoke test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from bench.core.hashing import content_hash
from bench.reports import Reporter, render

ROOT = Path(__file__).resolve().parents[2]
SOURCE = sorted((ROOT / "results" / "digits-class" / "runs").glob("salun-f0-b0-s0-fast-*"))
METHODS = ("original", "retrain", "ebu", "ft", "ga", "pecker", "rl", "sa", "salun", "sfd", "sfron")
SIZES = (30, 100, 300)
TASK = "digits-class"


def add_cell(tdir: Path, k: int, src: Path) -> Path:
    """Write synthetic cell number ``k`` (0-based) as the store does: a hidden folder renamed into place."""
    method = METHODS[k % len(METHODS)]
    base_seed, seed = (k // len(METHODS)) % 3, k // (3 * len(METHODS))
    row = json.loads((src / "row.json").read_text())
    rng = random.Random(k)
    code = content_hash(method, 12)
    cid = content_hash([method, k], 10)
    name = f"{method}-f0-b{base_seed}-s{seed}-fast-{cid}"
    row.update({"method": method, "base_seed": base_seed, "seed": seed, "cell": name, "cell_id": cid,
                "reference_row": method in ("original", "retrain"), "config_hash": code, "method_code": code,
                "config_json": json.dumps({"method": method}), "config_overrides": "{}",
                "ua": min(1.0, max(0.0, rng.gauss(0.95, 0.03))), "fid": abs(rng.gauss(0.25, 0.05)),
                "retain_acc": min(1.0, rng.gauss(0.99, 0.005)), "unlearn_s": rng.gauss(15.0, 1.0),
                "time_to_target_s": rng.gauss(3.0, 0.4), "time_to_target_steps": float(rng.randint(20, 40))})
    runs = tdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    tmp = runs / f".{name}.tmp"
    shutil.copytree(src, tmp)
    (tmp / "row.json").write_text(json.dumps(row, indent=2))
    os.replace(tmp, runs / name)
    return runs / name


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.mark.skipif(not SOURCE, reason="results/digits-class/runs holds no salun cell to copy")
def test_render_cost_per_finished_cell(benchmark, tmp_path):
    enabled = not getattr(benchmark, "disabled", False)
    sizes, rounds = (SIZES, 3) if enabled else (SIZES[:1], 1)
    src, tdir = SOURCE[0], tmp_path / TASK
    results = []
    k = 0
    for n in sizes:
        while k < n - 1:  # n - 1 cells finished ...
            add_cell(tdir, k, src)
            k += 1
        rep = Reporter(tdir)
        rep.update()  # ... and already known to the run's reporter
        incremental = []
        for _ in range(rounds):  # ... then one more finishes
            new = add_cell(tdir, k, src)
            incremental.append(_timed(rep.update))
            shutil.rmtree(new)
            rep.update()
        add_cell(tdir, k, src)
        k += 1
        full = [_timed(lambda: render(tdir, quiet=True)) for _ in range(rounds)]
        results.append({"cells": n, "full_render_s": min(full), "update_s": min(incremental),
                        "full_render_mean_s": sum(full) / len(full),
                        "update_mean_s": sum(incremental) / len(incremental)})

    # the headline statistic: update() after the last size's next cell, timed by pytest-benchmark
    rep = Reporter(tdir)
    rep.update()
    state = {"k": k}

    def one_more():
        add_cell(tdir, state["k"], src)
        state["k"] += 1
        return (), {}

    benchmark.pedantic(rep.update, setup=one_more, rounds=rounds, iterations=1)
    benchmark.extra_info["per_cell_cost"] = results
    lines = ["", "cells | full render (s) | Reporter.update (s) | full / update",
             "---|---|---|---"]
    lines += [f"{r['cells']} | {r['full_render_s']:.3f} | {r['update_s']:.4f} | "
              f"{r['full_render_s'] / r['update_s']:.0f}" for r in results]
    print("\n".join(lines) + f"\n(min over {rounds} round(s); means in extra_info)")
