"""Running cells safely beside other processes: claims, leftovers, and shared assets built first.

``bench run`` and ``bench sweep`` (and every sweep worker) run cells through :func:`run_cell`, so two
of them sharing a results folder never compute the same cell twice; a claim left by a killed
process expires with it (see :mod:`bench.core.locks`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.locks import claim, exclusive, holder
from bench.core.store import cell_dir, clear_failure, is_complete, load_row, record_failure, remove_leftovers, task_dir
from bench.engine.concept_eval import ShardPending
from bench.reports import Reporter


class CellBusy(RuntimeError):
    """Another live process holds this cell's claim (it is computing it)."""

    def __init__(self, cell: str, who: str) -> None:
        super().__init__(f"{cell} is being computed by another process ({who})")
        self.cell, self.who = cell, who


def claim_path(out: Path, task: str, cell: str) -> Path:
    """``<out>/<task>/.claims/<cell>.lock``; kept after use (see :mod:`bench.core.locks`)."""
    return task_dir(out, task) / ".claims" / f"{cell}.lock"


def run_cell(driver, spec, resume: bool = True, wait: bool = False) -> dict[str, Any]:
    """Load the cell if it is complete (``resume``); otherwise claim it and compute it. When another
    live process holds the claim, raise :class:`CellBusy`, or with ``wait`` block until it is
    released and then load what that process wrote (computing it only if it did not finish)."""
    name = driver.plan(spec).name
    folder = cell_dir(driver.out, spec.task, name)
    if resume and is_complete(folder):
        driver._log(f"skip {name}: already complete")
        return load_row(folder)
    shard = driver.options.shard
    # the shards of one concept cell render side by side: each claims its own part (the training they share
    # is serialised inside the cell, see bench.engine.concept_eval)
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


def run_and_record(driver, spec, name: str, resume: bool, wait: bool) -> tuple[str, dict | None]:
    """Run one cell through its claim: ``("done", row)``, ``("failed", None)`` (a method that raises is
    recorded under failures/ and the next cell still runs), ``("busy", None)`` (another process is computing
    it; with ``wait``, block for it instead) or ``("pending", None)`` (this shard is rendered, others are not)."""
    try:
        row = run_cell(driver, spec, resume=resume, wait=wait)
    except (KeyboardInterrupt, BenchError):
        raise
    except CellBusy as exc:
        print(f"    busy: {exc}; will wait for it at the end", file=sys.stderr)
        return "busy", None
    except ShardPending as exc:
        print(f"    {exc}", file=sys.stderr)
        return "pending", None
    except Exception as exc:  # noqa: BLE001 - a method's bug must not stop the other methods
        print(f"    FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        record_failure(driver.out, spec.task, name, dataclasses.asdict(spec), f"{type(exc).__name__}: {exc}",
                       traceback.format_exc())
        return "failed", None
    clear_failure(driver.out, spec.task, name)
    return "done", row


class Reports:
    """The report of a results folder while a run or sweep writes it: after each cell only the text
    outputs are brought up to date (the cost does not grow with the folder), at the end everything
    (plots, sample grids, report.html). Concurrent processes on one folder take turns."""

    def __init__(self, tdir: Path) -> None:
        self.tdir = tdir
        self.reporter = Reporter(tdir)

    def _locked(self, fn, **kwargs) -> str:
        with exclusive(self.tdir / ".render.lock"):
            return fn(**kwargs)

    def update(self) -> str:
        return self._locked(self.reporter.update, quiet=True)

    def finish(self) -> str:
        try:
            return self._locked(self.reporter.finish)
        except BenchError:  # nothing finished and nothing failed: no report to write
            return ""


def asset_key(kind: str, spec) -> tuple:
    """What tells two builds of :func:`asset_jobs` apart (equal keys: the same cached asset)."""
    if kind == "classifier":
        return (kind, spec.task, spec.profile)
    if kind == "model":
        return (kind, spec.task, spec.profile, spec.base_seed)
    return (kind, spec.task, spec.profile, spec.base_seed, spec.forget_class, spec.iters,
            json.dumps(spec.overrides, sort_keys=True, default=str))


def asset_jobs(specs) -> list[tuple[str, tuple, Any]]:
    """The independent builds these cells share, as ``(kind, key, spec)``: ``"model"`` (the base model
    of a base seed; a concept task's model), ``"classifier"`` (one per task and profile) and
    ``"retrain"`` (each Retrain cell's model; class tasks only, the cell knows its length). None of them
    needs another, so a sweep runs them side by side, one per worker."""
    jobs: dict[tuple, tuple[str, tuple, Any]] = {}
    for spec in specs:
        for kind in ("classifier", "model") + (("retrain",) if spec.method == "retrain" else ()):
            key = asset_key(kind, spec)
            jobs.setdefault(key, (kind, key, spec))
    return list(jobs.values())


def build_job(driver, kind: str, spec) -> None:
    """Build (or verify) one of :func:`asset_jobs`' assets in the cache, through ``driver``."""
    task = driver.task(spec.task)
    assets = driver.assets(task, spec.profile, spec.base_seed)
    if kind == "classifier":
        assets.classifier()
    elif kind == "model":
        assets.base("raw") if hasattr(assets, "base") else assets.model()
    elif kind == "retrain" and not getattr(task, "latent", False) and hasattr(assets, "retrain"):
        cell = driver.plan(spec)  # the Retrain length comes from the resolved config
        assets.retrain(spec.forget_class, int(cell.config.iters), task.weights_evaluated)

