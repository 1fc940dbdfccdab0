"""``bench list methods|tasks|metrics``: what is registered, with citations, sizes and profiles; read from the
catalogue (:mod:`bench.cli.catalog`), so nothing heavy is imported unless plugins are in play."""

from __future__ import annotations

import json

from bench.cli import catalog

HELP = "list registered methods, tasks or metrics"
ARROWS = {True: "↑", False: "↓", None: "(no direction)"}


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help=HELP, description=HELP)
    ls.add_argument("what", choices=["methods", "tasks", "metrics", "catalog"],
                    help="catalog: the JSON of all three, built by importing every plugin (bench/catalog.json)")
    ls.add_argument("--plugins", action="append", default=[], metavar="DIR")
    ls.set_defaults(command=command)


def command(args) -> int:
    if args.what == "catalog":
        print(json.dumps(catalog.build(args.plugins), indent=1))
        return 0
    cat = catalog.current(args.plugins)
    print("\n".join({"methods": _methods, "tasks": _tasks, "metrics": _metrics}[args.what](cat)))
    return 0


def _methods(cat: dict) -> list[str]:
    out = [f"{'method':10} {'status':15} {'data-free':9} {'output':10} {'tasks':14} citation"]
    for name, m in sorted(cat["methods"].items()):
        kinds = ",".join(m["task_kinds"])
        out.append(f"{name:10} {m['status']:15} {'yes' if m['data_free'] else 'no':9} {m['output']:10} {kinds:14} "
                   f"{m['paper']}")
    return out


def _tasks(cat: dict) -> list[str]:
    return [t["listing"] for _, t in sorted(cat["tasks"].items())]


def _metrics(cat: dict) -> list[str]:
    out = []
    for name, m in sorted(cat["metrics"].items()):
        dirs = ", ".join(f"{k} {ARROWS[v]}" for k, v in m["directions"].items())
        out.append(f"{name} (v{m['version']}{'' if m['default'] else ', optional: --metrics ' + name}): {dirs}\n"
                   f"    {m['definition']}")
    return out
