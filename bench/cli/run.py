"""``bench run``: a grid of cells in this process, one after the other, with tables after each cell."""

from __future__ import annotations

import sys
import time

from bench.cli import catalog
from bench.cli.args import device_argument, grid_arguments, grid_from_args, options_from_args

HELP = "run unlearning methods on a task and write tables and plots"
_REPORTED = (("ua", "UA", "{:.3f}"), ("retain_acc", "retain", "{:.3f}"), ("fid", "FID", "{:.2f}"),
             ("nudity_rate", "nudity", "{:.3f}"))


def add_parser(sub) -> None:
    r = sub.add_parser("run", help=HELP, description=HELP)
    grid_arguments(r)
    device_argument(r)
    r.add_argument("--no-resume", action="store_true", help="recompute cells that are already complete")
    r.set_defaults(command=command)


def command(args) -> int:
    options, grid = options_from_args(args), grid_from_args(args)
    catalog.quick_check(grid, options)  # a mistake in a name or number answers before torch is imported
    from bench.running.cells import Reports, run_and_record  # torch and diffusers: only once a command runs
    from bench.running.grid import plan_grid

    plan = plan_grid(options, grid)
    t0 = time.perf_counter()
    tdir = options.out / plan.task.name
    reports = Reports(tdir)
    failed: list[str] = []
    busy: list[tuple] = []
    pending = 0
    for k, (spec, name) in enumerate(zip(plan.specs, plan.names), 1):
        print(f"[{k}/{len(plan.specs)}] {spec.method} forget={spec.forget_class} base={spec.base_seed} "
              f"seed={spec.seed} ({grid.profile})", file=sys.stderr)
        status, row = run_and_record(plan.driver, spec, name, not args.no_resume, wait=False)
        if status == "busy":
            busy.append((spec, name))
        elif status == "failed":
            failed.append(name)
        elif status == "pending":
            pending += 1
        else:
            _report_cell(row)
            reports.update()
    for spec, name in busy:  # computed by another process: wait for it, then take its row
        print(f"waiting for {name} (another process is computing it)", file=sys.stderr)
        status, row = run_and_record(plan.driver, spec, name, not args.no_resume, wait=True)
        if status == "failed":
            failed.append(name)
        else:
            _report_cell(row)
    print(reports.finish())
    done = len(plan.specs) - len(failed) - pending
    print(f"bench: {len(plan.specs)} cell(s) in {time.perf_counter() - t0:.1f} s: {done} complete, {len(failed)} "
          f"failed{f', {pending} waiting for other shards' if pending else ''}; results in {tdir}", file=sys.stderr)
    if failed:
        print("bench: failed cells (error and traceback in failures/): " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def _report_cell(row: dict | None) -> None:
    if row is None:
        return
    if row.get("status") == "skipped":
        print(f"    skipped: {row.get('skip_reason', '')}", file=sys.stderr)
        return
    parts = [f"{label} {fmt.format(row[k])}" for k, label, fmt in _REPORTED if isinstance(row.get(k), (int, float))]
    print(f"    {'  '.join(parts)}  unlearn {row['unlearn_s']:.1f}s  steps {row['grad_steps']}", file=sys.stderr)
