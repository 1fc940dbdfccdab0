"""The architecture's rules, checked on the source: the layers of ``pyproject.toml`` (also enforced by
``lint-imports`` in ``tox -e lint``), no import cycle between modules, and imports inside functions only of
the heavy optional libraries (or, in ``bench/cli/``, of the layers below, so ``--help`` starts instantly).

Every import statement counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "metrics")
#: third-party libraries that may be imported inside a function: heavy to import and needed only by some
#: commands or metrics (or POSIX-only: resource)
HEAVY = {"diffusers", "transformers", "matplotlib", "torch_fidelity", "cleanfid", "timm", "ray", "onnxruntime",
         "nudenet", "scipy", "torchvision", "resource", "sklearn"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """``(imported name, at module level, line)`` for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(f"{base}.{a.name}", id(node) in top, node.lineno) for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for name, _, _ in _imports(m):
            target = _resolve(name)
            if target and target != m and not m.startswith(target + "."):  # a package's own __init__ is no cycle
                edges[m].add(target)
    return edges


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["type"] == "layers")["layers"]
    return [[part.strip() for part in layer.replace(":", "|").split("|")] for layer in layers]


def _layer_of(module: str, layers: list[list[str]]) -> int | None:
    for i, members in enumerate(layers):
        if any(module == m or module.startswith(m + ".") for m in members):
            return i
    return None


def test_no_module_imports_from_a_higher_layer():
    layers = _layers()
    assert len(layers) >= 8 and layers[-1] == ["bench.core"]
    unplaced = sorted(m for m in MODULES if _layer_of(m, layers) is None and m not in ("bench", "bench.__main__"))
    assert not unplaced, f"modules in no layer of pyproject.toml: {unplaced}"
    upward = []
    for a, targets in _graph().items():
        for b in targets:
            la, lb = _layer_of(a, layers), _layer_of(b, layers)
            if la is not None and lb is not None and lb < la:
                upward.append(f"{a} -> {b}")
    assert not upward, f"imports from a higher layer: {upward}"


def test_no_import_cycles():
    edges = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_inside_functions_only_where_a_heavy_dependency_justifies_it():
    bad = []
    for m in MODULES:
        for name, at_top, line in _imports(m):
            root = name.split(".")[0]
            if at_top or root in HEAVY or (m.startswith("bench.cli") and root in PACKAGES):
                continue
            bad.append(f"{m}:{line}: {name}")
    assert not bad, "imports inside functions of light or project modules (move them to the top):\n" + "\n".join(bad)


@pytest.mark.parametrize("planted,check,finding", [
    ({"bench.core.planted": "def f():\n    import bench.core.errors\n"},
     test_imports_inside_functions_only_where_a_heavy_dependency_justifies_it, "inside functions"),
    ({"bench.core.planted": "import bench.engine.driver\n"}, test_no_module_imports_from_a_higher_layer,
     "higher layer: \\['bench.core.planted -> bench.engine.driver'\\]"),
    ({"bench.core.planted_a": "import bench.core.planted_b\n", "bench.core.planted_b": "import bench.core.planted_a\n"},
     test_no_import_cycles, "cycles: \\[\\['bench.core.planted_a', 'bench.core.planted_b'\\]\\]"),
])
def test_the_checks_find_what_they_should(planted, check, finding, tmp_path, monkeypatch):
    """None of the checks is vacuous: planted modules that break a rule are reported by its check."""
    for module, source in planted.items():
        path = tmp_path / f"{module}.py"
        path.write_text(source)
        monkeypatch.setitem(MODULES, module, path)
    with pytest.raises(AssertionError, match=finding):
        check()
