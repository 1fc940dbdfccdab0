"""Discovery of methods and metrics: the bundled folders, ``--plugins`` folders and entry points."""

from __future__ import annotations

from pathlib import Path

import methods
import metrics
from bench.core.registry import import_folder, load_entry_points
from bench.method import METHODS
from bench.metric import METRICS

_loaded: set[str] = set()


def load_all(plugin_dirs: list[str] | tuple[str, ...] = ()) -> None:
    """Import every public module of ``methods/`` and ``metrics/``, each extra folder, and the
    ``bench.methods`` / ``bench.metrics`` entry-point groups. Safe to call repeatedly."""
    for pkg in (metrics, methods):
        if pkg.__name__ not in _loaded:
            import_folder(Path(pkg.__file__).parent, package=pkg.__name__)
            _loaded.add(pkg.__name__)
    for d in plugin_dirs:
        key = str(Path(d).resolve())
        if key not in _loaded:
            import_folder(Path(d))
            _loaded.add(key)
    if "entry-points" not in _loaded:
        load_entry_points("bench.methods", METHODS)
        load_entry_points("bench.metrics", METRICS)
        _loaded.add("entry-points")
