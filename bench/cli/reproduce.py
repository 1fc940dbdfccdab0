"""``bench reproduce``: remake a committed results folder from the commands it records.

A results folder ``<out>/<task>`` that can be remade holds ``reproduce.json``::

    {"commands": [{"argv": ["sweep", "--methods", "all", "--task", "digits-class", "--seed", "0,1"],
                   "env": {"OMP_NUM_THREADS": "1"}, "note": "why this command is here"}]}

Each command is a ``bench run``, ``sweep`` or ``pretrain`` for the folder's task, written without ``--out``:
reproduce runs them in order, each as ``python -m bench <argv> --out <out>``, so cells that the installed code
already made are reused and only the others are computed. When every command succeeded, the cells made by
other code than the installed one (the ones ``bench table`` warns about) are removed and the tables re-rendered:
the folder then holds only what this code gives. The same goes for cell folders below it (a base-length curve's)
in which the commands made cells; one they left untouched keeps the cells its committed summary was made from.
A failing command stops it with every cell still in place.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bench.cli.table import render_and_warn
from bench.core.errors import BenchError

HELP = "remake a results folder from the commands in its reproduce.json, then drop cells made by other code"
RECIPE = "reproduce.json"
SUBCOMMANDS = ("run", "sweep", "pretrain")


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help=HELP, description=HELP)
    p.add_argument("dir", help=f"a task results folder holding {RECIPE} (e.g. results/digits-class)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands and the cells of other code, run and remove nothing")
    p.add_argument("--only", metavar="I[,J]", default=None,
                   help="run only these commands (1-based, in the file's order); the others are skipped")
    p.add_argument("--keep-stale", action="store_true",
                   help="keep the cells made by other code than the installed one (default: removed at the end)")
    p.set_defaults(command=command)


def read_recipe(folder: Path) -> list[dict]:
    """The folder's commands, checked: one clear error for a missing file or a malformed entry."""
    path = folder / RECIPE
    if not folder.is_dir():
        raise BenchError(f"no such folder: {folder}")
    if not path.is_file():
        raise BenchError(f"{folder} records no commands ({RECIPE} is missing), so it cannot be reproduced")
    try:
        commands = json.loads(path.read_text())["commands"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"{path} is not a reproduce file ({type(exc).__name__}: {exc}); "
                         'expected {"commands": [{"argv": [...]}, ...]}') from None
    if not isinstance(commands, list) or not commands:
        raise BenchError(f"{path}: 'commands' must be a non-empty list")
    for i, cmd in enumerate(commands, 1):
        argv = cmd.get("argv") if isinstance(cmd, dict) else None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BenchError(f"{path}: command {i} needs 'argv', a non-empty list of strings")
        if argv[0] not in SUBCOMMANDS:
            raise BenchError(f"{path}: command {i} is 'bench {argv[0]}'; reproduce runs {', '.join(SUBCOMMANDS)}")
        if any(a == "--out" or a.startswith("--out=") for a in argv):
            raise BenchError(f"{path}: command {i} sets --out; reproduce writes to the folder's parent itself")
        task = argv[argv.index("--task") + 1] if "--task" in argv[:-1] else None
        if task != folder.name:
            raise BenchError(f"{path}: command {i} is for task {task!r}, not this folder's {folder.name!r}")
        env = cmd.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BenchError(f"{path}: command {i}'s 'env' must map names to strings")
    return commands


def _chosen(only: str | None, n: int) -> set[int]:
    if only is None:
        return set(range(1, n + 1))
    try:
        picked = {int(x) for x in only.split(",") if x.strip()}
    except ValueError:
        picked = set()
    if not picked or not picked <= set(range(1, n + 1)):
        raise BenchError(f"--only takes command numbers between 1 and {n}, comma-separated; got {only!r}")
    return picked


def command(args) -> int:
    from bench.engine.plugins import load_all  # torch, pandas and the plugins: only once a command runs

    folder = Path(args.dir).resolve()
    commands = read_recipe(folder)
    chosen = _chosen(args.only, len(commands))
    for i, cmd in enumerate(commands, 1):
        if i not in chosen:
            continue
        argv = [sys.executable, "-m", "bench", *cmd["argv"], "--out", str(folder.parent)]
        env = cmd.get("env", {})
        shown = " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(["python", *argv[1:]])])
        print(f"bench reproduce: [{i}/{len(commands)}] {shown}", file=sys.stderr, flush=True)
        if args.dry_run:
            continue
        rc = subprocess.call(argv, env={**os.environ, **env})
        if rc:
            raise BenchError(f"command {i} of {len(commands)} failed (exit {rc}); nothing was removed from {folder}: "
                             "fix the cause and rerun (finished cells are reused)")
    load_all()
    stale = _cells_of_other_code(folder)
    if args.dry_run or args.keep_stale:
        what = "would be removed" if args.dry_run else "are kept (--keep-stale)"
        print(f"bench reproduce: {len(stale)} cell(s) made by other code {what}", file=sys.stderr)
        return 0
    for cell in stale:
        shutil.rmtree(cell)
    print(f"bench reproduce: removed {len(stale)} cell(s) made by other code", file=sys.stderr)
    if (folder / "runs").is_dir():
        render_and_warn(folder)
    return 0


def _cells_of_other_code(folder: Path) -> list[Path]:
    """The cells of other code than the installed in ``folder/runs``, and in the cell folders below ``folder`` (a
    base-length curve's, for one) that the commands remade: one holding no cell of the installed code keeps the
    cells its committed summary came from."""
    from bench.reports import stale_cells

    out = [folder / "runs" / name for name in stale_cells(folder)]
    for runs in sorted(folder.glob("*/**/runs")):
        stale = stale_cells(runs.parent)
        if len(stale) < len(list(runs.glob("*/row.json"))):
            out += [runs / name for name in stale]
    return out
