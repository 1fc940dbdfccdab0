"""``bench list methods|tasks|metrics``: what is registered, with citations, sizes and profiles."""

from __future__ import annotations

HELP = "list registered methods, tasks or metrics"


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help=HELP, description=HELP)
    ls.add_argument("what", choices=["methods", "tasks", "metrics"])
    ls.add_argument("--plugins", action="append", default=[], metavar="DIR")
    ls.set_defaults(command=command)


def command(args) -> int:
    from bench.engine.plugins import load_all  # the plugins import torch: only once a command runs

    load_all(args.plugins)
    {"methods": _methods, "tasks": _tasks, "metrics": _metrics}[args.what]()
    return 0


def _methods() -> None:
    from bench.method import METHODS

    print(f"{'method':10} {'status':15} {'data-free':9} {'output':10} {'tasks':14} citation")
    for name in METHODS.names():
        m = METHODS.get(name)
        kinds = ",".join(sorted(m.task_kinds))
        print(f"{name:10} {m.status:15} {'yes' if m.data_free else 'no':9} {m.output:10} {kinds:14} {m.paper}")


def _tasks() -> None:
    from bench.tasks import TASKS, get_task

    for name in TASKS.names():
        t = get_task(name)
        if getattr(t, "kind", "class") == "concept":
            _concept_task(t)
            continue
        print(f"{name}: {t.description}\n    {t.channels}x{t.image_size}x{t.image_size}, {t.num_classes} classes, "
              f"base model {t.arch}; profiles: {', '.join(t.profiles)}; default forget class "
              f"{t.default_forget} -> cover {t.cover_class(t.default_forget)}\n    data: {t.data_source}")


def _concept_task(t) -> None:
    concepts = ", ".join(f"{i}: {c}" for i, c in enumerate(t.concepts))
    print(f"{t.name}: {t.description}\n    concepts {concepts}; default forget {t.default_forget}\n"
          f"    model: {t.arch if t.family == 'digits' else 'your SD v1.x folder (--base-model); smoke: micro model'}")
    for p in t.profiles.values():
        sets = ", ".join(f"{e.use} {e.set}{f' (first {e.limit})' if e.limit else ''}"
                         f"{f' x{e.images_per_row}' if e.images_per_row > 1 else ''}"
                         for e in t.eval_plan(p, t.default_forget))
        print(f"    profile {p.name}: {p.px} px, DDIM {p.sampler_steps}, s {p.guidance}; eval sets: {sets}")


def _metrics() -> None:
    from bench.metric import METRICS

    for name in METRICS.names():
        m = METRICS.get(name)
        arrows = {True: "↑", False: "↓", None: "(no direction)"}
        dirs = ", ".join(f"{k} {arrows[v]}" for k, v in m.directions.items())
        print(f"{name} (v{m.version}{'' if m.default else ', optional: --metrics ' + name}): {dirs}\n"
              f"    {m.definition}")
