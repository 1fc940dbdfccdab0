"""``docs/cli.md``, generated from the argument parser: ``python -m bench.cli.docs > docs/cli.md``.
``tests/test_cli_docs.py`` fails when the committed file no longer matches the parser."""

from __future__ import annotations

import argparse

from bench.cli import SUBCOMMANDS, build_parser

WIDTH = 100
HEADER = """# Command-line reference

Generated from the argument parser by `python -m bench.cli.docs > docs/cli.md` (a test checks that it is
current). Every command prints one line and exits with status 2 on a user mistake; results go to files,
the final table to stdout, progress and logs to stderr.
"""


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH, max_help_position=30)
    return parser.format_help().rstrip()


def render() -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [HEADER, "```", _help(parser), "```"]
    for module in SUBCOMMANDS:
        name = module.__name__.rsplit(".", 1)[-1]
        sub = subparsers.choices[name]
        parts += ["", f"## `{name}`", "", (module.__doc__ or "").strip().splitlines()[0], "", "```", _help(sub), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
