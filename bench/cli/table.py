"""``bench table``: re-render tables and plots from stored runs, without recomputing anything."""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import BenchError

HELP = "re-render tables and plots from stored runs (no recomputation)"


def add_parser(sub) -> None:
    t = sub.add_parser("table", help=HELP, description=HELP)
    t.add_argument("dir", help="a task results folder (<out>/<task>) or an --out folder")
    t.set_defaults(command=command)


def command(args) -> int:
    from bench.reports import render  # pandas and matplotlib: only once a command runs

    d = Path(args.dir)
    if not d.is_dir():
        raise BenchError(f"no such folder: {d}")
    targets = [d] if (d / "runs").is_dir() else [c for c in sorted(d.iterdir()) if (c / "runs").is_dir()]
    if not targets:
        raise BenchError(f"{d} holds no runs: pass <out>/<task> or an --out folder")
    for t in targets:
        print(render(t))
    return 0
