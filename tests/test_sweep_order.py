"""A sweep submits the costliest cells first (bench/running/order.py), guessing costs from the folder's
earlier runs.csv."""

from __future__ import annotations

from types import SimpleNamespace

from bench.running.order import longest_first, past_costs


def _cells(*methods: str) -> list:
    return [(SimpleNamespace(method=m), f"{m}-{i}") for i, m in enumerate(methods)]


def test_costs_are_each_methods_mean_recorded_seconds(tmp_path):
    runs = tmp_path / "runs.csv"
    runs.write_text("method,unlearn_s,sample_s,evaluate_s,probe_s,refine_s,ua\n"
                    "ga,10,1,1,0,0,1.0\n"
                    "ga,20,1,1,,,1.0\n"
                    "sfron,600,10,5,5,0,1.0\n"
                    "bad,x,1,1,1,1,1.0\n")
    assert past_costs(runs) == {"ga": 17.0, "sfron": 620.0}
    assert past_costs(tmp_path / "missing.csv") == {}


def test_unknown_methods_then_the_costliest_go_first_in_grid_order_among_equals():
    todo = _cells("ga", "sfron", "ga", "new", "rl", "sfron")
    order = [name for _, name in longest_first(todo, {"ga": 17.0, "sfron": 620.0, "rl": 17.0})]
    assert order == ["new-3", "sfron-1", "sfron-5", "ga-0", "ga-2", "rl-4"]
    assert longest_first(todo, {}) == todo  # nothing known: the grid's order
