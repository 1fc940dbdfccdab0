"""``bench sweep``: a grid of cells as Ray tasks, on a local Ray instance or a cluster (``--address``).

Ray is the scheduler; this module only expands the grid, builds the shared assets first, submits one task
per missing cell (the costliest first, :mod:`bench.running.order`) with its resources (``--cpus-per-cell``,
``--gpus-per-cell``), retries a failing cell once, and renders the tables as cells finish. Every cell runs
through :func:`bench.running.cells.run_cell`, so it is claimed before it runs: two sweeps, or a sweep and a
``bench run``, on the same results folder never compute the same cell twice, and a claim left by a killed
worker expires with it. Finished cells are written atomically by the workers, so Ctrl-C, a killed worker or a
killed driver leave every finished cell on disk, and the next sweep runs only what is missing.

On a cluster every node must have this project installed (the same version) and see the same
results and cache folders at the same paths (a shared file system with coherent ``flock``, e.g.
NFSv4); ``--out`` and ``--cache`` are resolved to absolute paths before they are sent to workers.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from bench.core.errors import BenchError
from bench.core.store import cell_dir, clear_failure, is_complete, record_failure
from bench.engine.concept_eval import ShardPending
from bench.engine.driver import CellSpec, Driver
from bench.engine.options import Options
from bench.engine.plugins import load_all
from bench.running.cells import CellBusy, Reports, asset_jobs, asset_key, build_job, run_cell
from bench.running.grid import Grid, plan_grid
from bench.running.order import longest_first, past_costs

_DRIVERS: dict[tuple, Driver] = {}  # per worker process: one Driver (and its loaded assets) per setting


@dataclass(frozen=True)
class SweepSettings:
    """Where the cells run: the Ray cluster and each cell's resources."""

    address: str | None = None  # None: a local Ray instance
    cpus_per_cell: int = 1  # also each cell's PyTorch thread count
    gpus_per_cell: float | None = None  # None: 1 with --device cuda, else 0
    quiet: bool = False


def _worker_driver(options: Options, plugins: tuple[str, ...], threads: int) -> Driver:
    """The worker process's Driver for these options, created once and kept (its assets stay loaded)."""
    key = (options, plugins)
    if key not in _DRIVERS:
        os.environ["TQDM_DISABLE"] = "1"
        torch.set_num_threads(max(1, int(threads)))
        load_all(plugins)
        _DRIVERS[key] = Driver(options.replace(progress=False), log=lambda m: None)
    return _DRIVERS[key]


def _spec(d: dict) -> CellSpec:
    return CellSpec(**{**d, "metrics": tuple(d["metrics"])})


def run_one(options: Options, plugins: tuple[str, ...], threads: int, spec: dict, wait: bool, *after) -> dict:
    """One cell in a worker: ``{"status": "done" | "busy" | "failed", ...}`` (never raises for a
    method's error, so the driver can retry it and record it). ``after``: results of builds Ray waits
    for before it starts the cell (its Retrain model); a failed build is rebuilt by the cell itself."""
    t0 = time.perf_counter()
    try:
        row = run_cell(_worker_driver(options, plugins, threads), _spec(spec), resume=True, wait=wait)
    except CellBusy as exc:
        return {"status": "busy", "who": exc.who}
    except ShardPending as exc:  # this shard of a concept cell is rendered; the cell completes later
        return {"status": "done", "seconds": time.perf_counter() - t0, "summary": {"shard": str(exc)}}
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries once and records it
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    return {"status": "done", "seconds": time.perf_counter() - t0,
            "summary": {k: row.get(k) for k in ("ua", "retain_acc", "fid", "unlearn_s", "grad_steps")}}


def build_one(options: Options, plugins: tuple[str, ...], threads: int, kind: str, spec: dict) -> dict:
    """One shared asset (:func:`bench.running.cells.asset_jobs`) in a worker: ``{"status", "seconds"}``
    and, when it failed, ``"error"`` (the driver stops on a failed model or classifier)."""
    t0 = time.perf_counter()
    try:
        build_job(_worker_driver(options, plugins, threads), kind, _spec(spec))
    except Exception as exc:  # noqa: BLE001 - the driver reports it
        return {"status": "failed", "kind": kind, "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "done", "kind": kind, "seconds": time.perf_counter() - t0}


def run_sweep(options: Options, grid: Grid, sweep: SweepSettings) -> int:
    """The ``bench sweep`` command: plan, build shared assets, run missing cells, render."""
    try:
        import ray
    except ImportError:
        raise BenchError("bench sweep needs Ray: pip install 'ray>=2' (or pip install -e '.[sweep]')") from None
    if sweep.cpus_per_cell < 1:
        raise BenchError(f"--cpus-per-cell must be at least 1, got {sweep.cpus_per_cell}")
    gpus = sweep.gpus_per_cell if sweep.gpus_per_cell is not None else (1.0 if options.device == "cuda" else 0.0)
    if gpus < 0:
        raise BenchError(f"--gpus-per-cell must be non-negative, got {sweep.gpus_per_cell}")
    plan = plan_grid(options, grid, threads=sweep.cpus_per_cell)
    out, task = options.out, plan.task.name
    tdir = out / task
    todo = [(s, n) for s, n in zip(plan.specs, plan.names) if not is_complete(cell_dir(out, task, n))]
    print(f"bench sweep: {len(plan.specs)} cell(s), {len(plan.specs) - len(todo)} already complete, {len(todo)} to run",
          file=sys.stderr)
    todo = longest_first(todo, past_costs(tdir / "runs.csv"))
    reports = Reports(tdir)
    if not todo:
        print(reports.finish())
        return 0
    plugins = tuple(str(p) for p in grid.plugins)
    init = {"address": sweep.address, "include_dashboard": False, "log_to_driver": False, "logging_level": "warning",
            "runtime_env": {"env_vars": {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}}}
    if not sweep.address:
        init["num_cpus"] = os.cpu_count() or 1
    t0 = time.perf_counter()
    try:
        ray.init(**init)
    except Exception as exc:  # noqa: BLE001 - an unreachable cluster is the user's setting
        raise BenchError(f"cannot start or join Ray (--address {sweep.address or 'local'}): {exc}") from None
    try:
        return _drive(ray, (options, plugins, sweep.cpus_per_cell), todo, gpus, sweep, tdir, out, task, t0, reports)
    finally:
        ray.shutdown()


def _slots(resources: dict, cpus: float, gpus: float) -> int:
    """How many cells the cluster runs at once with these per-cell resources (Ray's own packing)."""
    n = int(resources.get("CPU", 1) // cpus) if cpus else 1 << 30
    if gpus:
        n = min(n, int(resources.get("GPU", 0) // gpus))
    return max(1, n)


def _drive(ray, worker: tuple, todo, gpus, sweep: SweepSettings, tdir, out, task, t0, reports) -> int:
    have = ray.cluster_resources()
    for kind, need in (("CPU", sweep.cpus_per_cell), ("GPU", gpus)):
        if need and have.get(kind, 0) < need:  # Ray would queue the cells forever
            raise BenchError(f"every cell asks for {need:g} {kind}(s) but the Ray cluster has {have.get(kind, 0):g}; "
                             f"lower --{kind.lower()}s-per-cell or add nodes")
    opts = {"num_cpus": sweep.cpus_per_cell, "num_gpus": gpus, "max_retries": 0}
    cell = ray.remote(**opts)(run_one)
    build = ray.remote(**opts)(build_one)
    specs = {n: asdict(s) for s, n in todo}
    # every shared asset is built by its own task, side by side; cells start once their base model and
    # the classifier exist, and a Retrain cell once its Retrain model exists (Ray holds it until then)
    jobs = asset_jobs([s for s, _ in todo])
    refs = {key: (kind, build.remote(*worker, kind, asdict(spec))) for kind, key, spec in jobs}
    needed = [ref for kind, ref in refs.values() if kind != "retrain"]
    for res in ray.get(needed):
        if res["status"] == "failed":
            raise BenchError(f"building the shared assets failed ({res['kind']}): {res['error']}")
    print(f"bench sweep: base model(s) and classifier ready after {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    cells = {n: s for s, n in todo}

    def submit(name: str, wait: bool):
        s = cells[name]
        after = [refs[asset_key("retrain", s)][1]] if s.method == "retrain" else []
        return cell.remote(*worker, specs[name], wait, *after)

    pending = {submit(n, False): (n, 1, False) for _, n in todo}
    slots = _slots(have, sweep.cpus_per_cell, gpus)
    done = failed = 0
    busy: list[str] = []
    bar = tqdm(total=len(todo), desc="cells", disable=sweep.quiet, dynamic_ncols=True, file=sys.stderr)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            name, attempt, waited = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a worker died or Ray failed the task
                res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            if res["status"] == "busy":
                busy.append(name)
                if not pending:  # only cells other processes are computing remain: wait for them now
                    for b in busy:
                        pending[submit(b, True)] = (b, 1, True)
                    busy = []
                continue
            if res["status"] == "failed" and attempt < 2:
                print(f"bench sweep: {name} failed ({res['error']}); retrying once", file=sys.stderr)
                pending[submit(name, waited)] = (name, attempt + 1, waited)
                continue
            if res["status"] == "failed":
                failed += 1
                record_failure(out, task, name, specs[name], res["error"], res["traceback"], attempts=attempt)
                print(f"bench sweep: FAILED {name}: {res['error']}", file=sys.stderr)
                reports.update()
            else:
                done += 1
                clear_failure(out, task, name)
                reports.update()
            bar.update(1)
            bar.set_postfix(done=done, failed=failed, running=min(len(pending), slots),
                            queued=max(0, len(pending) - slots), refresh=False)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        bar.close()
        print(f"bench sweep: interrupted; {done} cell(s) finished in this sweep are saved, the next sweep runs "
              f"only what is missing", file=sys.stderr)
        return 130
    bar.close()
    print(reports.finish())
    print(f"bench sweep: {len(todo)} cell(s) in {time.perf_counter() - t0:.1f} s: {done} complete, {failed} failed; "
          f"results in {tdir}", file=sys.stderr)
    return 1 if failed else 0
