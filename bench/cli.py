"""``python -m bench``: run cells, pretrain base models, list the registries, re-render tables.

User mistakes (unknown names, a bad forget class, a missing folder) print one line and exit 2;
results and tables go to files, the final table to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from bench.errors import BenchError

DEFAULT_OUT = "runs"


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*accelerate.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_fidelity")
    from diffusers.utils import logging

    logging.set_verbosity_error()


def _int_list(text: str, what: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise ValueError
    return out


def _parse_ints(what: str):
    def parse(text: str) -> list[int]:
        try:
            return _int_list(text, what)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be integers like 0 or 0,1,2 or 0-9, got {text!r}") from None

    return parse


def _parse_sets(items: list[str], methods: list[str]) -> dict[str, dict]:
    from bench.method import parse_value

    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects METHOD.KEY=VALUE or KEY=VALUE, got {item!r}")
        method, dot, field = key.rpartition(".")
        targets = [method] if dot else methods
        if dot and method not in out:
            raise BenchError(f"--set {item!r}: method {method!r} is not among --methods ({', '.join(methods)})")
        for m in targets:
            out[m][field] = parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run unlearning methods on a task and write tables and plots")
    r.add_argument("--methods", required=True, help="comma-separated method names, or 'all'")
    r.add_argument("--task", required=True, help="task name (see 'list tasks')")
    r.add_argument("--forget-class", type=_parse_ints("--forget-class"), default=None,
                   help="class(es) to forget, e.g. 0 or 0,3 or 0-9 (default: the task's)")
    r.add_argument("--seed", type=_parse_ints("--seed"), default=[0], help="seed(s), e.g. 0 or 0,1,2")
    r.add_argument("--profile", default="fast", help="smoke | fast | paper (budgets and evaluation settings)")
    r.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: ./{DEFAULT_OUT})")
    r.add_argument("--plugins", action="append", default=[], metavar="DIR", help="extra folder of method plugins")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default: cpu)")
    r.add_argument("--steps", type=int, default=None, help="override every method's iteration budget")
    r.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override a method option, e.g. --set salun.lr=1e-5")
    r.add_argument("--metrics", default="", help="optional metrics to add, e.g. relearn")
    r.add_argument("--fid-backend", choices=["torch-fidelity", "clean-fid"], default=None,
                   help="FID library (default: the profile's, torch-fidelity)")
    r.add_argument("--cache", default=None, help="asset cache (default: $BENCH_CACHE or ~/.cache/unlearn-bench)")
    r.add_argument("--no-resume", action="store_true", help="recompute cells that are already complete")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    pt = sub.add_parser("pretrain", help="train (or verify) the cached base model and classifier of a task")
    pt.add_argument("--task", required=True)
    pt.add_argument("--profile", default="fast")
    pt.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pt.add_argument("--cache", default=None)

    ls = sub.add_parser("list", help="list registered methods, tasks or metrics")
    ls.add_argument("what", choices=["methods", "tasks", "metrics"])
    ls.add_argument("--plugins", action="append", default=[], metavar="DIR")

    t = sub.add_parser("table", help="re-render tables and plots from stored runs (no recomputation)")
    t.add_argument("dir", help="a task results folder (<out>/<task>) or an --out folder")
    return p


def cmd_list(args) -> int:
    from bench.method import METHODS
    from bench.metric import METRICS
    from bench.plugins import load_all
    from bench.tasks import TASKS, get_task

    load_all(args.plugins)
    if args.what == "methods":
        print(f"{'method':10} {'status':15} {'data-free':9} {'output':10} citation")
        for name in METHODS.names():
            m = METHODS.get(name)
            print(f"{name:10} {m.status:15} {'yes' if m.data_free else 'no':9} {m.output:10} {m.paper}")
    elif args.what == "tasks":
        for name in TASKS.names():
            t = get_task(name)
            print(f"{name}: {t.description}; profiles: {', '.join(t.profiles)}; default forget class "
                  f"{t.default_forget} -> cover {t.cover_class(t.default_forget)}")
    else:
        for name in METRICS.names():
            m = METRICS.get(name)
            dirs = ", ".join(f"{k} {'↑' if v else '↓' if v is False else '(no direction)'}"
                             for k, v in m.directions.items())
            print(f"{name} (v{m.version}{'' if m.default else ', optional: --metrics ' + name}): {dirs}\n"
                  f"    {m.definition}")
    return 0


def cmd_pretrain(args) -> int:
    import torch

    from bench.assets import Assets
    from bench.tasks import get_task

    task = get_task(args.task)
    assets = Assets(task, task.profile(args.profile), torch.device(args.device), args.cache)
    t0 = time.perf_counter()
    assets.base("raw")
    assets.classifier()
    print(f"base model: {assets.base_meta['steps']} steps, trained in {assets.base_meta['train_seconds']:.1f} s; "
          f"classifier test accuracy {assets.classifier_meta['test_acc']:.3f} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_run(args) -> int:
    import torch

    from bench.driver import CellSpec, Driver
    from bench.method import METHODS
    from bench.metric import METRICS
    from bench.plugins import load_all
    from bench.report import render
    from bench.tasks import TASKS, get_task

    load_all(args.plugins)
    if args.task not in TASKS:
        raise TASKS.unknown(args.task)
    task = get_task(args.task)
    task.profile(args.profile)
    methods = METHODS.resolve_list(args.methods)
    if args.methods.strip() == "all":  # reference rows first, so a partial run already has its anchors
        methods.sort(key=lambda m: (not METHODS.get(m).reference_row, m))
    extra = tuple(METRICS.resolve_list(args.metrics)) if args.metrics.strip() else ()
    classes = args.forget_class or [task.default_forget]
    sets = _parse_sets(args.set, methods)
    if args.steps is not None and args.steps < 0:
        raise BenchError(f"--steps must be non-negative, got {args.steps}")
    if args.fid_backend:
        task = dataclasses.replace(task)
        task.profiles = {k: dataclasses.replace(v, fid_backend=args.fid_backend) for k, v in task.profiles.items()}
    if args.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    driver = Driver(Path(args.out), args.device, Path(args.cache) if args.cache else None, progress=not args.quiet,
                    task_override=task)
    specs = [CellSpec(task.name, m, c, s, args.profile, sets[m], args.steps, extra)
             for c in classes for s in args.seed for m in methods]
    for spec in specs:  # validate every cell before spending any compute
        driver.plan(spec)
    t0 = time.perf_counter()
    for k, spec in enumerate(specs, 1):
        print(f"[{k}/{len(specs)}] {spec.method} forget={spec.forget_class} seed={spec.seed} ({args.profile})",
              file=sys.stderr)
        row = driver.run(spec, resume=not args.no_resume)
        print(f"    UA {row['ua']:.3f}  retain {row['retain_acc']:.3f}  FID {row['fid']:.2f}  "
              f"unlearn {row['unlearn_s']:.1f}s  steps {row['grad_steps']}", file=sys.stderr)
        render(Path(args.out) / task.name, quiet=True)
    md = render(Path(args.out) / task.name)
    print(md)
    print(f"bench: {len(specs)} cell(s) in {time.perf_counter() - t0:.1f} s; results in {Path(args.out) / task.name}",
          file=sys.stderr)
    return 0


def cmd_table(args) -> int:
    from bench.report import render

    d = Path(args.dir)
    if not d.is_dir():
        raise BenchError(f"no such folder: {d}")
    targets = [d] if (d / "runs").is_dir() else [c for c in sorted(d.iterdir()) if (c / "runs").is_dir()]
    if not targets:
        raise BenchError(f"{d} holds no runs: pass <out>/<task> or an --out folder")
    for t in targets:
        print(render(t))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        return {"run": cmd_run, "list": cmd_list, "table": cmd_table, "pretrain": cmd_pretrain}[args.command](args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; completed cells are saved and will be skipped on the next run", file=sys.stderr)
        return 130
