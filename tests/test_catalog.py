"""The catalogue (bench/cli/catalog.py): the committed bench/catalog.json describes the plugins as they are, the
listing and the argument checks answer from it without importing torch, diffusers, transformers, Ray or NudeNet,
a mistake gets the same message from the quick check as from the full planner, and a stale catalogue or a plugin
folder falls back to importing."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.cli import catalog
from bench.core.errors import BenchError
from bench.engine.options import Grid, Options
from bench.running.grid import plan_grid

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "ray", "nudenet")


@pytest.fixture
def project_plugins_only(monkeypatch):
    """The registries as a fresh process has them: without what other test modules registered at import."""
    from bench.engine.plugins import load_all
    from bench.method import METHODS
    from bench.metric import METRICS
    from bench.tasks import TASKS

    load_all([])
    for registry in (METHODS, METRICS, TASKS):
        project = {n: t for n, t in registry._items.items()
                   if (t if isinstance(t, str) else f"{t.__module__}:").startswith(("methods.", "metrics.", "bench."))}
        monkeypatch.setattr(registry, "_items", project)


def test_the_committed_catalogue_is_current(project_plugins_only):
    """Fails when a method, metric or task changed without ``python -m bench list catalog > bench/catalog.json``."""
    committed = catalog.read()
    assert committed is not None, "bench/catalog.json is stale: run python -m bench list catalog > bench/catalog.json"
    assert committed == json.loads(json.dumps(catalog.build())), "rebuild bench/catalog.json"


def test_a_method_registered_by_the_calling_code_is_seen(monkeypatch, project_plugins_only):
    """A library user's ``register_method`` before ``bench.cli.main``: the catalogue does not know the name, so
    the registries answer."""
    from bench.method import METHODS, Method

    class Here(Method):
        @dataclass(frozen=True)
        class Config:
            iters: int = 0

    assert catalog.usable() is not None
    monkeypatch.setitem(METHODS._items, "registered-here-test", Here)
    assert catalog.usable() is None and "registered-here-test" in catalog.current()["methods"]


def _in_fresh_python(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, stderr, the heavy packages imported) of ``bench <argv>`` in a new interpreter."""
    code = ("import contextlib, io, sys\nfrom bench.cli import main\nerr = io.StringIO()\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
            f"    rc = main({argv!r})\n"
            f"print(rc, [m for m in {HEAVY!r} if m in sys.modules], repr(err.getvalue()), sep='\\n')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    rc, heavy, err = out.stdout.strip().splitlines()[-3:]
    return int(rc), eval(err), eval(heavy)  # noqa: S307 - our own repr


@pytest.mark.parametrize("what", ["methods", "tasks", "metrics"])
def test_listing_imports_nothing_heavy(what):
    rc, _err, heavy = _in_fresh_python(["list", what])
    assert rc == 0 and heavy == []


MISTAKES = [
    dict(task="digits-class", methods="salun,pekcer"),
    dict(task="digit-class", methods="salun"),
    dict(task="digits-class", methods="salun", forget_classes=(12,)),
    dict(task="digits-class", methods="uce"),
    dict(task="digits-class", methods="salun", profile="quick"),
    dict(task="digits-class", methods="salun", metrics="robustness,completionn"),
    dict(task="digits-class", methods="salun", seeds=(-1,)),
    dict(task="digits-class", methods="salun", steps=-2),
    dict(task="sd-digits", methods="esd", concepts="nine,eleven"),
]


def _argv(g: dict) -> list[str]:
    argv = ["run", "--task", g["task"], "--methods", g["methods"], "--out", "unused"]
    for key, flag in (("forget_classes", "--forget-class"), ("seeds", "--seed")):
        if key in g:
            argv += [flag, ",".join(map(str, g[key]))]
    for key, flag in (("profile", "--profile"), ("metrics", "--metrics"), ("steps", "--steps"),
                      ("concepts", "--concept")):
        if key in g:
            argv += [flag, str(g[key])]
    return argv


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda g: "-".join(map(str, g.values())))
def test_a_mistake_is_answered_without_torch_in_the_planners_words(mistake, tmp_path, project_plugins_only):
    rc, err, heavy = _in_fresh_python(_argv(mistake))
    assert rc == 2 and heavy == [] and err.startswith("bench: error: ") and err.count("\n") == 1
    with pytest.raises(BenchError) as planned:
        plan_grid(Options(out=tmp_path / "out", cache=tmp_path / "cache"), Grid(**{"profile": "fast", **mistake}))
    assert err == f"bench: error: {planned.value}\n"


def test_a_missing_path_is_answered_without_torch(tmp_path):
    rc, err, heavy = _in_fresh_python(["run", "--task", "digits-class", "--methods", "salun",
                                       "--base-model", str(tmp_path / "nope.pth")])
    missing = tmp_path / "nope.pth"
    assert rc == 2 and heavy == [] and err == f"bench: error: --base-model {missing}: no such file or folder\n"
    rc, err, heavy = _in_fresh_python(["pretrain", "--task", "sd-digit"])
    assert rc == 2 and heavy == [] and "Did you mean sd-digits?" in err


def test_a_stale_catalogue_or_a_plugin_folder_is_built_by_importing(tmp_path, monkeypatch):
    stale = json.loads(catalog.FILE.read_text())
    stale["fingerprint"] = "0" * 16
    stale["methods"].pop("salun")
    monkeypatch.setattr(catalog, "FILE", tmp_path / "catalog.json")
    catalog.FILE.write_text(json.dumps(stale))
    assert catalog.read() is None and "salun" in catalog.current()["methods"]
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "dropped.py").write_text(
        "from dataclasses import dataclass\nfrom bench.method import Method, register_method\n"
        "@register_method('catalog-plugin-test')\nclass P(Method):\n    @dataclass(frozen=True)\n    class Config:\n"
        "        iters: int = 0\n    def unlearn(self, ctx):\n        return ctx.sampler(ctx.base_model())\n")
    cat = catalog.current([str(tmp_path / "plugins")])
    assert cat["methods"]["catalog-plugin-test"]["status"] == "user"


def test_the_fingerprint_follows_the_plugin_sources(tmp_path, monkeypatch):
    for rel in ("methods/a.py", "metrics/b.py", "bench/tasks/c.py", "bench/method.py", "bench/other.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    monkeypatch.setattr(catalog, "ROOT", tmp_path)
    first = catalog.fingerprint()
    (tmp_path / "bench" / "other.py").write_text("x = 2\n")  # not a source the catalogue describes
    assert catalog.fingerprint() == first
    (tmp_path / "methods" / "new.py").write_text("")  # a plugin dropped in
    assert catalog.fingerprint() != first
