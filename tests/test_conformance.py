"""Every registered method, end to end on the smoke profile of the tiny task.

Checks the contract the driver relies on: the counted optimizer steps equal the budget, nothing is
NaN, the output kind and NFE are what the method declares, and the method actually forgets (its UA
is above the Original model's on the same samples budget).
"""

from __future__ import annotations

import math

import pytest

from bench.driver import CellSpec
from bench.method import METHODS
from bench.plugins import load_all

load_all()
ALL = METHODS.names()


@pytest.mark.parametrize("name", ALL)
def test_method_runs_end_to_end_and_forgets(name, driver, original_row):
    cls = METHODS.get(name)
    row = driver.run(CellSpec("digits-class", name, forget_class=0, seed=0, profile="smoke"))
    assert row["grad_steps"] == row["expected_steps"] == row["iters"] * cls.steps_per_iter
    for key in ("ua", "retain_acc", "fid", "unlearn_s", "nfe", "peak_mem_mb"):
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), key
    assert row["output"] == cls.output
    assert row["nfe"] == row["nfe_declared"]
    if cls.output == "one-step":
        assert row["nfe"] == 1
    if row["grad_steps"]:
        assert row["backward_passes"] >= 1
    if name != "original" and cls.forgets:
        assert row["ua"] > original_row["ua"], f"{name} did not forget: UA {row['ua']} vs {original_row['ua']}"


def test_original_is_calibrated(original_row):
    assert original_row["ua"] <= 0.1
    assert original_row["retain_acc"] >= 0.85


def test_budget_override_is_honoured(driver):
    row = driver.run(CellSpec("digits-class", "ga", forget_class=3, seed=1, profile="smoke", iters=4))
    assert row["iters"] == 4 and row["grad_steps"] == 4 and row["forget_class"] == 3 and row["cover_class"] == 4
