"""``bench table``: re-render tables and plots from stored runs, without recomputing anything; say when the runs
were made by other code than the installed one."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.core.errors import BenchError

HELP = ("re-render tables and plots from stored runs (no recomputation); warns about cells made by other code than "
        "the installed one")


def add_parser(sub) -> None:
    t = sub.add_parser("table", help=HELP, description=HELP)
    t.add_argument("dir", help="a task results folder (<out>/<task>) or an --out folder")
    t.set_defaults(command=command)


def command(args) -> int:
    from bench.engine.plugins import load_all  # pandas, matplotlib and the plugins: only once a command runs

    d = Path(args.dir)
    if not d.is_dir():
        raise BenchError(f"no such folder: {d}")
    targets = [d] if (d / "runs").is_dir() else [c for c in sorted(d.iterdir()) if (c / "runs").is_dir()]
    if not targets:
        raise BenchError(f"{d} holds no runs: pass <out>/<task> or an --out folder")
    load_all()
    for t in targets:
        render_and_warn(t)
    return 0


def render_and_warn(folder: Path) -> None:
    """Re-render ``folder``, print its Markdown, and warn on stderr about cells made by other code."""
    from bench.reports import folder_stale_code_warnings, render

    print(render(folder))
    for w in folder_stale_code_warnings(folder):
        print(f"bench: WARNING: {folder}: {w}", file=sys.stderr)
