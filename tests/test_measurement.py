"""What the driver measures: time to the UA target at a fine resolution, peak memory per phase,
base seeds, code versions in the cell identity."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import pytest
import torch

from bench.context import snapshot_every
from bench.core.measure import PeakMemory
from bench.engine.driver import CellSpec, Driver
from bench.engine.options import Options
from bench.method import METHODS, Method, register_method
from bench.tasks import get_task

SWITCH_AT = 37  # the iteration after which the switch method's model draws the cover class


class Switch(Method):
    """Forgets abruptly: after iteration SWITCH_AT the forget class's embedding row becomes the cover
    class's, so its samples are drawn as the cover class (UA ~1) from then on. Every iteration takes
    one (zero-lr) optimizer step, so steps and iterations can be told apart by a factor."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 100
        switch_at: int = SWITCH_AT

    paper = "test fixture"
    steps_per_iter = 2

    def unlearn(self, ctx):
        net = ctx.base_model("raw")
        opt = ctx.optimizer(net.parameters(), lr=0.0)
        emb = net.unet.class_embedding.weight
        for i in ctx.steps(self.config.iters):
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                net(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long)).sum().backward()
                opt.step()
            if i + 1 == self.config.switch_at:
                with torch.no_grad():
                    emb[ctx.forget_class] = emb[ctx.cover_class]
        return ctx.sampler(net)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Registered for this module's tests only: a module-level decorator would show the method to every test
    collected into the same process (the catalogue's listing tests among them)."""
    register_method("test-switch")(Switch)
    yield
    METHODS._items.pop("test-switch", None)


def test_snapshot_interval_is_at_most_two_percent_of_the_budget():
    assert snapshot_every(100, 0.02) == 2 and snapshot_every(150, 0.02) == 3 and snapshot_every(20, 0.02) == 1
    for n in (1, 7, 50, 150, 1000, 50_000):
        assert 1 <= snapshot_every(n, 0.02) <= max(1, 0.02 * n)


def test_time_to_target_is_resolved_between_probes(driver, assets):
    # smoke profile: probes at iterations 0, 50 and 100 only; snapshots every 2 iterations
    row = driver.run(CellSpec("digits-class", "test-switch", forget_class=0, seed=0, profile="smoke"))
    assert row["snapshot_interval"] == 2
    first_even_after_switch = SWITCH_AT + (SWITCH_AT % 2)
    assert row["time_to_target_iters"] == first_even_after_switch  # not 50, the first probe that sees it
    assert row["time_to_target_steps"] == 2 * first_even_after_switch  # optimizer steps, not iterations
    assert 0 < row["time_to_target_s"] < row["unlearn_s"]
    # bisection over the 24 snapshots between the probes at 0 and 50: about log2(25) probes, not 24
    assert 1 <= row["refine_probes"] <= 6
    assert row["refine_s"] > 0 and row["probe_s"] > 0


def test_time_to_target_without_refinement_would_be_quantised(driver, assets):
    task = get_task("digits-class")
    smoke = dataclasses.replace(task.profiles["smoke"], ttt_resolution=1.0)  # no snapshots between probes
    task = dataclasses.replace(task, profiles={**task.profiles, "smoke": smoke})
    d = Driver(driver.options.replace(out=driver.out / "coarse"), log=lambda m: None, tasks=[task])
    row = d.run(CellSpec("digits-class", "test-switch", forget_class=0, seed=0, profile="smoke"))
    assert row["time_to_target_iters"] == 50 and row["refine_probes"] == 0


def test_peak_memory_counts_the_phase_above_its_start_and_skips_pauses():
    cpu = torch.device("cpu")
    held = torch.ones(64 * 2**20 // 4)  # 64 MiB allocated before the phase: not the phase's
    with PeakMemory(cpu, interval=0.005) as mem:
        x = torch.ones(128 * 2**20 // 4)  # 128 MiB inside the phase
        time.sleep(0.05)
        del x
        with mem.paused():
            y = torch.ones(512 * 2**20 // 4)  # 512 MiB during a probe: excluded
            time.sleep(0.05)
            del y
    assert mem.kind == "cpu-rss"
    assert 100 <= mem.peak_mb <= 300, mem.peak_mb
    del held


def test_base_seed_selects_another_base_model(driver, tmp_path):
    task = get_task("digits-class")
    tiny = dataclasses.replace(task.profiles["smoke"], pretrain=dataclasses.replace(
        task.profiles["smoke"].pretrain, steps=5), n_probes=0)
    task = dataclasses.replace(task, profiles={**task.profiles, "smoke": tiny})
    d = Driver(Options(out=tmp_path / "out", cache=tmp_path / "cache", progress=False), log=lambda m: None,
               tasks=[task])
    rows = [d.run(CellSpec("digits-class", "original", 0, seed=0, profile="smoke", base_seed=b)) for b in (0, 1)]
    assert [r["base_seed"] for r in rows] == [0, 1]
    assert [r["base_training_seed"] for r in rows] == [1234, 1235]
    assert rows[0]["base_hash"] != rows[1]["base_hash"]
    assert "-b0-" in rows[0]["cell"] and "-b1-" in rows[1]["cell"]
    again = d.run(CellSpec("digits-class", "original", 0, seed=0, profile="smoke", base_seed=1))
    assert again["base_hash"] == rows[1]["base_hash"] and again["cell"] == rows[1]["cell"]  # cached and resumed


def test_code_versions_are_part_of_the_cell_identity(driver, monkeypatch, tmp_path):
    from bench.core import codever
    from bench.engine import driver as driver_mod

    spec = CellSpec("digits-class", "ga", 0, seed=0, profile="smoke")
    name = driver.plan(spec).name
    monkeypatch.setattr(driver_mod, "harness_version", lambda: "another")
    assert driver.plan(spec).name != name  # a row made by other harness code is never reused
    monkeypatch.undo()
    assert driver.plan(spec).name == name
    plugin = tmp_path / "codever_plugin.py"
    plugin.write_text("X = 1\n")
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("codever_plugin", plugin)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    class Fake:
        __module__ = "codever_plugin"

    import sys

    sys.modules["codever_plugin"] = module
    try:
        before = codever.method_version(Fake)
        plugin.write_text("X = 2\n")
        assert codever.method_version(Fake) != before
    finally:
        del sys.modules["codever_plugin"]


def test_method_version_covers_the_shared_modules_a_method_uses():
    from bench.core.codever import method_modules

    files = {p.name for p in method_modules(METHODS.get("pecker"))}
    assert {"pecker.py", "sfd.py", "_distill.py", "_masks.py"} <= files
    assert "salun.py" not in files  # only what it uses
