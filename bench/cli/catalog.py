"""What the command line knows of the registered methods, metrics and tasks without importing them.

Importing the plugins pulls in torch, diffusers and transformers (several seconds of CPU), yet ``bench list``
and a typo in a method name should answer at once. So the names, kinds, one-line descriptions and the facts
the argument checks need are kept in ``bench/catalog.json``, built by importing everything once
(``python -m bench list catalog > bench/catalog.json`` rewrites it; a test keeps the committed file
current).

The file records a fingerprint of the sources it describes (``methods/``, ``metrics/``, ``bench/tasks/`` and
the contracts ``bench/method.py``, ``bench/metric.py``, ``bench/sd/prompts.py``). Where they differ (a plugin
dropped in, a method edited), or ``--plugins`` folders, entry-point plugins or methods registered by the calling
code are in play, :func:`current` builds
the catalogue by importing, as before: slower, never stale.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from bench.core.argchecks import (
    check_forget,
    check_kind,
    check_paths,
    check_profile,
    check_seeds,
    check_steps,
    concept_index,
)
from bench.core.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "bench" / "catalog.json"
SOURCES = ("methods/*.py", "metrics/*.py", "bench/tasks/*.py", "bench/method.py", "bench/metric.py",
           "bench/sd/prompts.py")
ENTRY_POINT_GROUPS = ("bench.methods", "bench.metrics")


def fingerprint() -> str:
    h = hashlib.sha256()
    for p in sorted({p for pattern in SOURCES for p in ROOT.glob(pattern)}):
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _entry_points() -> bool:
    return any(importlib.metadata.entry_points(group=g) for g in ENTRY_POINT_GROUPS)


def build(plugins: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The catalogue of everything registered, by importing every plugin (``plugins``: extra folders)."""
    from bench.engine.plugins import load_all  # torch and diffusers: only here
    from bench.method import METHODS
    from bench.metric import METRIC_GROUPS, METRICS
    from bench.tasks import TASKS, get_task

    load_all(list(plugins))
    return {"fingerprint": fingerprint(),
            "methods": {n: method_entry(METHODS.get(n)) for n in METHODS.names()},
            "metrics": {n: metric_entry(METRICS.get(n)) for n in METRICS.names()},
            "metric_groups": {k: list(v) for k, v in METRIC_GROUPS.items()},
            "tasks": {n: task_entry(get_task(n)) for n in TASKS.names()}}


def method_entry(cls: type) -> dict[str, Any]:
    return {"target": f"{cls.__module__}:{cls.__qualname__}", "status": cls.status, "data_free": cls.data_free,
            "output": cls.output, "task_kinds": sorted(cls.task_kinds), "paper": cls.paper}


def metric_entry(cls: type) -> dict[str, Any]:
    return {"target": f"{cls.__module__}:{cls.__qualname__}", **cls.describe()}


def task_entry(t: Any) -> dict[str, Any]:
    """The facts the argument checks need, and the task's ``bench list tasks`` text."""
    kind = getattr(t, "kind", "class")
    entry = {"kind": kind, "num_classes": t.num_classes, "profiles": list(t.profiles),
             "concepts": list(getattr(t, "concepts", ())), "default_forget": t.default_forget}
    if kind == "concept":
        concepts = ", ".join(f"{i}: {c}" for i, c in enumerate(t.concepts))
        model = t.arch if t.family == "digits" else "your SD v1.x folder (--base-model); smoke: micro model"
        lines = [f"{t.name}: {t.description}", f"    concepts {concepts}; default forget {t.default_forget}",
                 f"    model: {model}"]
        for p in t.profiles.values():
            sets = ", ".join(f"{e.use} {e.set}{f' (first {e.limit})' if e.limit else ''}"
                             f"{f' x{e.images_per_row}' if e.images_per_row > 1 else ''}"
                             for e in t.eval_plan(p, t.default_forget))
            lines.append(f"    profile {p.name}: {p.px} px, DDIM {p.sampler_steps}, s {p.guidance}; eval sets: {sets}")
    else:
        lines = [f"{t.name}: {t.description}",
                 f"    {t.channels}x{t.image_size}x{t.image_size}, {t.num_classes} classes, base model {t.arch}; "
                 f"profiles: {', '.join(t.profiles)}; default forget class {t.default_forget} -> cover "
                 f"{t.cover_class(t.default_forget)}", f"    data: {t.data_source}"]
    return {**entry, "listing": "\n".join(lines)}


def read() -> dict[str, Any] | None:
    """The committed catalogue if it describes the sources as they are; None otherwise."""
    try:
        cat = json.loads(FILE.read_text())
    except (OSError, ValueError):
        return None
    return cat if cat.get("fingerprint") == fingerprint() else None


def _registered_here(cat: dict[str, Any]) -> bool:
    """Whether this process registered a method, metric or task the catalogue does not list (a library user
    calling :func:`bench.cli.main` after ``register_method``): only the registries know of it then. A registry
    module not imported yet has registered nothing, and looking does not import it."""
    for module, attr, key in (("bench.method", "METHODS", "methods"), ("bench.metric", "METRICS", "metrics"),
                              ("bench.tasks", "TASKS", "tasks")):
        registry = getattr(sys.modules.get(module), attr, None)
        if registry is not None and set(registry.names()) - set(cat[key]):
            return True
    return False


def usable() -> dict[str, Any] | None:
    """The committed catalogue where it tells the whole truth: current, no entry-point plugins, nothing
    registered in this process beyond it; None where only importing can tell."""
    cat = None if _entry_points() else read()
    return None if cat is None or _registered_here(cat) else cat


def current(plugins: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The catalogue of what a command with these ``--plugins`` folders can use: read when it can be, else built."""
    cat = None if plugins else usable()
    return cat if cat is not None else build(plugins)


def names(kind: str, entries: dict[str, Any]) -> Registry:
    """A registry of the names only (for the messages about unknown names, the same as the real registry's)."""
    reg: Registry = Registry(kind)
    for n, e in entries.items():
        reg.add(n, e.get("target", n))
    return reg


def check_grid(cat: dict[str, Any], grid: Any, options: Any) -> None:
    """The mistakes in names, numbers and paths of a ``bench run``/``sweep`` grid, found from the catalogue with
    the planner's own messages; what needs data or models is left to the planner."""
    tasks = names("task", cat["tasks"])
    if grid.task not in tasks:
        raise tasks.unknown(grid.task)
    name = tasks.canonical(grid.task)
    task = cat["tasks"][name]
    methods = names("method", cat["methods"]).resolve_list(grid.methods)
    if grid.metrics.strip():
        groups = cat["metric_groups"]
        wanted = [m for n in grid.metrics.split(",") if n.strip() for m in groups.get(n.strip().lower(), [n.strip()])]
        names("metric", cat["metrics"]).resolve_list(",".join(wanted))
    check_paths(options)
    check_profile(name, grid.profile, task["profiles"])
    kind = task["kind"]
    if grid.methods.strip().lower() != "all":
        kind_methods = [n for n, e in cat["methods"].items() if kind in e["task_kinds"]]
        for m in methods:
            check_kind(m, kind, name, cat["methods"][m]["task_kinds"], kind_methods)
    classes = list(grid.forget_classes)
    if grid.concepts and kind == "concept":
        classes = [concept_index(name, c, task["concepts"]) for c in grid.concepts.split(",") if c.strip()]
    for c in classes:
        check_forget(name, task["num_classes"], c)
    for s in grid.seeds:
        for b in grid.base_seeds:
            check_seeds(s, b)
    check_steps(grid.steps)


def quick_check(grid: Any, options: Any) -> None:
    """:func:`check_grid` from the committed catalogue, before anything heavy is imported; skipped (left to the
    planner) when plugins are in play or the catalogue is not current."""
    cat = None if grid.plugins else usable()
    if cat is not None:
        check_grid(cat, grid, options)


def quick_check_task(task: str, profile: str) -> None:
    """The task and profile names of ``bench pretrain``, from the committed catalogue when it is current."""
    cat = usable()
    if cat is None:
        return
    tasks = names("task", cat["tasks"])
    if task not in tasks:
        raise tasks.unknown(task)
    name = tasks.canonical(task)
    check_profile(name, profile, cat["tasks"][name]["profiles"])
