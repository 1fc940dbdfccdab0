"""Name-keyed registries for methods, tasks and metrics, with plugin discovery.

Entries are registered under an explicit string key (never ``cls.__name__``, so renaming a class
cannot silently break stored configs). Targets may be lazy ``"module:attr"`` strings; they are
imported and type-checked on first use.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from bench.core.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self._base = base
        self._items: dict[str, T | str] = {}
        self._frozen = False

    def add(self, name: str, target: T | str, *, replace: bool = False) -> None:
        if self._frozen:
            raise ValueError(f"the {self.kind} registry is frozen; cannot add {name!r}")
        if not name or any(ch.isspace() for ch in name) or "," in name:
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._items and not replace and self._items[name] is not target:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = target

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def freeze(self) -> None:
        self._frozen = True

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def canonical(self, name: str) -> str | None:
        """The registered spelling of ``name``: exact, else the one case-insensitive match, else None."""
        if name in self._items:
            return name
        folded = [k for k in self._items if k.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else None

    def unknown(self, name: str) -> BenchError:
        lowered = {k.lower(): k for k in self._items}
        scored = sorted(((difflib.SequenceMatcher(None, name.lower(), k).ratio(), k) for k in lowered), reverse=True)
        # names sharing a long suffix ("-class") all look alike: keep those about as close as the best
        best = scored[0][0] if scored else 0.0
        near = [lowered[k] for r, k in scored[:3] if r >= max(0.5, best - 0.1)]
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        return BenchError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        key = self.canonical(name)
        if key is None:
            raise self.unknown(name)
        name = key
        obj = self._items[name]
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._items[name] = obj
        if self._base is not None and isinstance(obj, type) and not issubclass(obj, self._base):
            raise TypeError(f"{self.kind} {name!r} is not a {self._base.__name__}")
        return obj

    def resolve_list(self, spec: str) -> list[str]:
        """Turn ``"a,b"`` or ``"all"`` into validated names, in the given (or sorted) order."""
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise BenchError(f"no {self.kind} named; available: {', '.join(self.names())}")
        if [n.lower() for n in names] == ["all"]:
            return self.names()
        out = []
        for n in names:
            key = self.canonical(n)
            if key is None:
                raise self.unknown(n)
            out.append(key)
        return list(dict.fromkeys(out))


def import_folder(folder: Path, package: str | None = None) -> list[str]:
    """Import every public ``*.py`` of a folder so that its ``register`` decorators run.

    Files starting with ``_`` are private helpers and are not imported here. With ``package`` the
    modules are imported as ``package.stem`` (the installed layout); otherwise as stand-alone
    plugin modules under a private namespace.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"plugin folder {str(folder)!r} does not exist")
    loaded = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        if package:
            importlib.import_module(f"{package}.{path.stem}")
        else:
            mod_name = f"bench_plugin_{abs(hash(str(path.resolve())))}_{path.stem}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise BenchError(f"cannot import plugin {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a broken plugin is the user's file: say which and why
                del sys.modules[mod_name]
                raise BenchError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
        loaded.append(path.stem)
    return loaded


def load_entry_points(group: str, registry: Registry) -> None:
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name not in registry:
            registry.add(ep.name, f"{ep.module}:{ep.attr}" if ep.attr else ep.value)
