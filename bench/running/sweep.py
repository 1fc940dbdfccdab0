"""``bench sweep``: a grid of cells as Ray tasks, on a local Ray instance or a cluster (``--address``).

Ray is the scheduler; this module only expands the grid, builds the shared assets first, submits
one task per missing cell with its resources (``--cpus-per-cell``, ``--gpus-per-cell``), retries a
failing cell once, and renders the tables as cells finish. Every cell runs through
:func:`bench.running.cells.run_cell`, so it is claimed before it runs: two sweeps, or a sweep and a
``bench run``, on the same results folder never compute the same cell twice, and a claim left by a
killed worker expires with it. Finished cells are written atomically by the workers, so Ctrl-C, a
killed worker or a killed driver leave every finished cell on disk, and the next sweep runs only
what is missing.

On a cluster every node must have this project installed (the same version) and see the same
results and cache folders at the same paths (a shared file system with coherent ``flock``, e.g.
NFSv4); ``--out`` and ``--cache`` are resolved to absolute paths before they are sent to workers.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

_DRIVERS: dict[tuple, Any] = {}  # per worker process: one Driver (and its loaded assets) per setting


def _concept_kwargs(c: dict | None) -> dict:
    if not c:
        return {}
    from bench.cli import _parse_shard

    return {"prompts_dir": Path(c["prompts_dir"]) if c.get("prompts_dir") else None,
            "allow_pickle": bool(c.get("allow_pickle")), "base_label": c.get("base_label") or "",
            "one_step_generator": c.get("one_step_generator"), "concept_options": c.get("options") or {},
            "shard": _parse_shard(c.get("shard")),
            "forget_images": Path(c["forget_images"]) if c.get("forget_images") else None,
            "remain_images": Path(c["remain_images"]) if c.get("remain_images") else None}


def _worker_driver(ctx: dict):
    """The worker process's Driver for this sweep's settings, created once and kept (assets stay loaded)."""
    key = (ctx["out"], ctx["cache"], ctx["device"], ctx["task"], ctx["fid_backend"], tuple(ctx["plugins"]),
           ctx.get("precision"), ctx.get("data_root"), ctx.get("base_model"), ctx.get("base_weights"),
           ctx.get("pretrain_steps"), ctx.get("fid_features"), ctx.get("inception_weights"), ctx.get("paper_compat"),
           repr(ctx.get("concept")), ctx.get("classifier"), ctx.get("unet"))
    if key not in _DRIVERS:
        import torch

        from bench.cli import _quiet_libraries, resolve_task
        from bench.driver import Driver
        from bench.plugins import load_all

        os.environ["TQDM_DISABLE"] = "1"
        _quiet_libraries()
        torch.set_num_threads(max(1, int(ctx["threads"])))
        load_all(ctx["plugins"])
        task = resolve_task(ctx["task"], ctx["fid_backend"], ctx.get("fid_features"), bool(ctx.get("paper_compat")),
                            ctx.get("unet"))
        from bench.precision import parse_precision

        opt = ctx.get
        _DRIVERS[key] = Driver(Path(ctx["out"]), ctx["device"], Path(ctx["cache"]), progress=False,
                               log=lambda m: None, task_override=task, precision=parse_precision(opt("precision")),
                               data_root=Path(opt("data_root")) if opt("data_root") else None,
                               base_model=Path(opt("base_model")) if opt("base_model") else None,
                               base_weights=opt("base_weights") or "ema", pretrain_steps=opt("pretrain_steps"),
                               inception_weights=opt("inception_weights"), **_concept_kwargs(ctx.get("concept")),
                               classifier_path=Path(opt("classifier")) if opt("classifier") else None)
    return _DRIVERS[key]


def _spec(d: dict):
    from bench.driver import CellSpec

    return CellSpec(**{**d, "metrics": tuple(d["metrics"])})


def run_one(ctx: dict, spec: dict, wait: bool) -> dict:
    """One cell in a worker: ``{"status": "done" | "busy" | "failed", ...}`` (never raises for a
    method's error, so the driver can retry it and record it)."""
    from bench.running.cells import CellBusy, run_cell
    from bench.sd.driver import ShardPending

    t0 = time.perf_counter()
    try:
        row = run_cell(_worker_driver(ctx), _spec(spec), resume=True, wait=wait)
    except CellBusy as exc:
        return {"status": "busy", "who": exc.who}
    except ShardPending as exc:  # this shard of a concept cell is rendered; the cell completes later
        return {"status": "done", "seconds": time.perf_counter() - t0, "summary": {"shard": str(exc)}}
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries once and records it
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    return {"status": "done", "seconds": time.perf_counter() - t0,
            "summary": {k: row.get(k) for k in ("ua", "retain_acc", "fid", "unlearn_s", "grad_steps")}}


def prepare(ctx: dict, specs: list[dict]) -> float:
    """Build the cached assets these cells share (one base seed's base model, the classifier, Retrain)."""
    from bench.running.cells import prepare_assets

    t0 = time.perf_counter()
    prepare_assets(_worker_driver(ctx), [_spec(s) for s in specs])
    return time.perf_counter() - t0


def run_sweep(args) -> int:
    """The ``bench sweep`` command: plan, build shared assets, run missing cells, render."""
    from bench.cli import Reports, plan_grid
    from bench.errors import BenchError
    from bench.store import cell_dir, is_complete

    try:
        import ray
    except ImportError:
        raise BenchError("bench sweep needs Ray: pip install 'ray>=2' (or pip install -e '.[sweep]')") from None
    if args.cpus_per_cell < 1:
        raise BenchError(f"--cpus-per-cell must be at least 1, got {args.cpus_per_cell}")
    gpus = args.gpus_per_cell if args.gpus_per_cell is not None else (1.0 if args.device == "cuda" else 0.0)
    if gpus < 0:
        raise BenchError(f"--gpus-per-cell must be non-negative, got {args.gpus_per_cell}")
    task, out, cache, driver, specs, names = plan_grid(args, threads=args.cpus_per_cell)
    tdir = out / task.name
    todo = [(s, n) for s, n in zip(specs, names) if not is_complete(cell_dir(out, task.name, n))]
    print(f"bench sweep: {len(specs)} cell(s), {len(specs) - len(todo)} already complete, {len(todo)} to run",
          file=sys.stderr)
    reports = Reports(tdir)
    if not todo:
        print(reports.finish())
        return 0
    ctx = {"out": str(out.resolve()), "cache": str(Path(cache).resolve()), "device": args.device,
           "task": task.name, "fid_backend": args.fid_backend, "threads": args.cpus_per_cell,
           "plugins": [str(Path(p).resolve()) for p in args.plugins], "precision": args.precision,
           "data_root": str(Path(args.data_root).resolve()) if args.data_root else None,
           "base_model": str(Path(args.base_model).resolve()) if args.base_model else None,
           "base_weights": args.base_weights, "pretrain_steps": args.pretrain_steps,
           "fid_features": args.fid_features, "inception_weights": args.inception_weights,
           "paper_compat": args.paper_compat, "unet": args.unet,
           "classifier": str(Path(args.classifier).resolve()) if getattr(args, "classifier", None) else None,
           # concept tasks: the cells of a sweep share one folder of prompt files, metric inputs and settings
           "concept": {"prompts_dir": str(Path(args.prompts_dir).resolve()) if args.prompts_dir else None,
                       "allow_pickle": args.allow_pickle, "base_label": args.base_label,
                       "one_step_generator": args.one_step_generator,
                       "options": {k: getattr(args, k) for k in ("imagenet_classifier", "clip_model", "coco_images",
                                                                 "inception_weights")},
                       "shard": args.shard,
                       "forget_images": str(Path(args.forget_images).resolve()) if args.forget_images else None,
                       "remain_images": str(Path(args.remain_images).resolve()) if args.remain_images else None}}
    init = {"address": args.address, "include_dashboard": False, "log_to_driver": False, "logging_level": "warning",
            "runtime_env": {"env_vars": {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}}}
    if not args.address:
        init["num_cpus"] = os.cpu_count() or 1
    t0 = time.perf_counter()
    try:
        ray.init(**init)
    except Exception as exc:  # noqa: BLE001 - an unreachable cluster is the user's setting
        raise BenchError(f"cannot start or join Ray (--address {args.address or 'local'}): {exc}") from None
    try:
        return _drive(ray, ctx, todo, gpus, args, tdir, out, task.name, t0, reports)
    finally:
        ray.shutdown()


def _slots(resources: dict, cpus: float, gpus: float) -> int:
    """How many cells the cluster runs at once with these per-cell resources (Ray's own packing)."""
    n = int(resources.get("CPU", 1) // cpus) if cpus else 1 << 30
    if gpus:
        n = min(n, int(resources.get("GPU", 0) // gpus))
    return max(1, n)


def _drive(ray, ctx, todo, gpus, args, tdir, out, task, t0, reports) -> int:
    from tqdm.auto import tqdm

    from bench.errors import BenchError
    from bench.store import clear_failure, record_failure

    have = ray.cluster_resources()
    for kind, need in (("CPU", args.cpus_per_cell), ("GPU", gpus)):
        if need and have.get(kind, 0) < need:  # Ray would queue the cells forever
            raise BenchError(f"every cell asks for {need:g} {kind}(s) but the Ray cluster has {have.get(kind, 0):g}; "
                             f"lower --{kind.lower()}s-per-cell or add nodes")
    opts = {"num_cpus": args.cpus_per_cell, "num_gpus": gpus, "max_retries": 0}
    cell = ray.remote(**opts)(run_one)
    build = ray.remote(**opts)(prepare)
    specs = {n: asdict(s) for s, n in todo}
    by_base: dict[int, list[dict]] = {}
    for spec, name in todo:
        by_base.setdefault(spec.base_seed, []).append(specs[name])
    # shared assets first: the classifier with the first base seed, then the other base seeds in parallel
    bases = sorted(by_base)
    try:
        ray.get(build.remote(ctx, by_base[bases[0]]))
        ray.get([build.remote(ctx, by_base[b]) for b in bases[1:]])
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        raise BenchError(f"building the shared assets failed: {type(cause).__name__}: {cause}") from None
    print(f"bench sweep: shared assets ready after {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    pending = {cell.remote(ctx, specs[n], False): (n, 1, False) for _, n in todo}
    slots = _slots(have, args.cpus_per_cell, gpus)
    done = failed = 0
    busy: list[str] = []
    bar = tqdm(total=len(todo), desc="cells", disable=args.quiet, dynamic_ncols=True, file=sys.stderr)
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
                        pending[cell.remote(ctx, specs[b], True)] = (b, 1, True)
                    busy = []
                continue
            if res["status"] == "failed" and attempt < 2:
                print(f"bench sweep: {name} failed ({res['error']}); retrying once", file=sys.stderr)
                pending[cell.remote(ctx, specs[name], waited)] = (name, attempt + 1, waited)
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
