"""``python -m bench``: run cells, sweep them over Ray, pretrain base models, list the registries, re-render
tables, remake a committed results folder. One module per subcommand; each adds its parser and the function
that runs it.

User mistakes (unknown names, a bad forget class, a missing folder) print one line and exit 2;
results and tables go to files, the final table to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from bench.cli import list as list_cmd
from bench.cli import pretrain, reproduce, run, sweep, table
from bench.core.errors import BenchError

SUBCOMMANDS = (run, sweep, pretrain, list_cmd, table, reproduce)
DESCRIPTION = ("One harness for machine unlearning in diffusion models: run unlearning methods on a task, sweep "
               "them over Ray, pretrain base models, list what is registered, re-render tables, remake a results "
               "folder.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="{run,sweep,pretrain,list,table,reproduce}")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*accelerate.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_fidelity")
    # read by diffusers when it is first imported: setting it costs nothing for commands that never import it
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm at import: silences pretraining bars too
    try:
        _quiet_libraries()
        return args.command(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; completed cells are saved and will be skipped on the next run", file=sys.stderr)
        return 130
