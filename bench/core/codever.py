"""Code versions that go into every cell's identity, so a results folder never mixes rows made by
different code: a content hash of the harness code that determines the numbers, and one of the
method's own code (its module and every module it uses from the same folder, e.g. ``methods/_*.py``).

Modules that only present results (CLI, tables, plots, storage, provenance) are left out of the
harness hash: changing a table's layout must not invalidate finished cells.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
#: files and packages of bench/ (relative paths) whose changes cannot change a cell's numbers: the command
#: line, tables, plots and the page (reports/), orchestration that only decides where and when a cell runs
#: (running/, locks), storage and provenance. Keep numerics out of these.
PRESENTATION = {"__init__.py", "__main__.py", "cli", "reports", "running", "core/__init__.py", "core/store.py",
                "core/envinfo.py", "core/codever.py", "core/errors.py", "core/registry.py", "core/paths.py",
                "core/locks.py", "core/argchecks.py", "engine/plugins.py", "engine/calibrate.py"}


def _presentation(rel: Path) -> bool:
    """``rel`` (relative to bench/) is in :data:`PRESENTATION` or inside a package listed there."""
    return rel.as_posix() in PRESENTATION or rel.parts[0] in PRESENTATION


def _digest(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def harness_version() -> str:
    """Hash of ``bench/**/*.py`` (but :data:`PRESENTATION`) and ``metrics/*.py``."""
    bench = ROOT / "bench"
    files = [p for p in bench.rglob("*.py") if not _presentation(p.relative_to(bench))]
    files += list((ROOT / "metrics").glob("*.py"))
    return _digest(files, ROOT)


def _module_file(module: ModuleType) -> Path | None:
    f = getattr(module, "__file__", None)
    return Path(f).resolve() if f else None


def method_modules(cls: type) -> list[Path]:
    """The method's module file and, transitively, every module in the same folder that it uses."""
    start = sys.modules.get(cls.__module__)
    first = _module_file(start) if start is not None else None
    if first is None:
        return []
    folder = first.parent
    seen: dict[Path, None] = {}
    todo = [start]
    while todo:
        mod = todo.pop()
        path = _module_file(mod)
        if path is None or path in seen or path.parent != folder:
            continue
        seen[path] = None
        for value in vars(mod).values():
            dep = value if inspect.ismodule(value) else sys.modules.get(getattr(value, "__module__", "") or "")
            if dep is not None:
                todo.append(dep)
    return list(seen)


def method_version(cls: type) -> str:
    files = method_modules(cls)
    if not files:
        return "unknown"
    return _digest(files, files[0].parent)
