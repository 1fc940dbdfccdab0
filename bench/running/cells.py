"""Running cells safely beside other processes: claims, leftovers, and shared assets built first.

``bench run`` and ``bench sweep`` (and every sweep worker) run cells through :func:`run_cell`, so two
of them sharing a results folder never compute the same cell twice; a claim left by a killed
process expires with it (see :mod:`bench.running.claims`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.running.claims import claim, holder
from bench.store import cell_dir, is_complete, load_row, remove_leftovers, task_dir


class CellBusy(RuntimeError):
    """Another live process holds this cell's claim (it is computing it)."""

    def __init__(self, cell: str, who: str) -> None:
        super().__init__(f"{cell} is being computed by another process ({who})")
        self.cell, self.who = cell, who


def claim_path(out: Path, task: str, cell: str) -> Path:
    """``<out>/<task>/.claims/<cell>.lock``; kept after use (see :mod:`bench.running.claims`)."""
    return task_dir(out, task) / ".claims" / f"{cell}.lock"


def run_cell(driver, spec, resume: bool = True, wait: bool = False) -> dict[str, Any]:
    """Load the cell if it is complete (``resume``); otherwise claim it and compute it. When another
    live process holds the claim, raise :class:`CellBusy`, or with ``wait`` block until it is
    released and then load what that process wrote (computing it only if it did not finish)."""
    name = driver.plan(spec)[2]
    folder = cell_dir(driver.out, spec.task, name)
    if resume and is_complete(folder):
        driver._log(f"skip {name}: already complete")
        return load_row(folder)
    shard = getattr(driver, "shard", (0, 1))
    # the shards of one concept cell render side by side: each claims its own part (the training they share
    # is serialised inside the cell, see bench.sd.driver)
    lock = claim_path(driver.out, spec.task, name if shard == (0, 1) else f"{name}.shard{shard[0]}of{shard[1]}")
    held = claim(lock, wait=wait)
    if held is None:
        raise CellBusy(name, holder(lock))
    with held:
        if resume and is_complete(folder):  # finished by the previous holder meanwhile
            driver._log(f"skip {name}: completed by another process")
            return load_row(folder)
        remove_leftovers(folder)
        return driver.run(spec, resume=False)


def prepare_assets(driver, specs) -> None:
    """Build (or verify) every cached asset the cells need, once, before any cell runs: the base
    model and classifier of each (task, profile, base seed), and Retrain for each (base seed,
    forget class, length) among the cells. Cells then only load them."""
    from bench.method import METHODS

    seen = set()
    for spec in specs:
        task = driver.get_task(spec.task)
        assets = driver.assets(task, spec.profile, spec.base_seed)
        key = (task.name, spec.profile, spec.base_seed)
        if key not in seen:
            assets.base("raw")
            assets.classifier()
            seen.add(key)
        if METHODS.get(spec.method).name == "retrain":
            cfg = driver.plan(spec)[0]
            rkey = key + (spec.forget_class, int(cfg.iters))
            if rkey not in seen:
                assets.retrain(spec.forget_class, int(cfg.iters), task.weights_evaluated)
                seen.add(rkey)
