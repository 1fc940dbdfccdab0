"""Shared fixtures: one cached base model and classifier per test session (trained once, ~1 min).

Set ``BENCH_CACHE`` to reuse a cache across sessions; otherwise a fresh temporary cache is used, so
the suite never depends on anything a developer trained by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers.utils import logging as _dlog  # noqa: E402

_dlog.set_verbosity_error()
# BENCH_THREADS lets a developer run the suite beside other work without oversubscribing the cores. Under
# pytest-xdist (tox runs `-n 2`) the workers share the cores: each gets its share, and so do the `bench`
# processes the tests start (OMP_NUM_THREADS, which `bench run` honours), since threads of two processes
# spinning on one core slow both 10-20x.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
_THREADS = int(os.environ.get("BENCH_THREADS") or max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

from bench.engine.plugins import load_all  # noqa: E402

load_all()


def _is_xdist_controller(config) -> bool:
    return not os.environ.get("PYTEST_XDIST_WORKER") and (getattr(config.option, "numprocesses", None) or 0) > 1


def pytest_sessionstart(session):
    """Under pytest-xdist, build the assets every worker needs (the digits base model and classifier, the
    sd-digits model) once, in the controller, with every core, before the workers start (xdist starts them
    after this hook); otherwise one worker builds them on one thread while the other waits on its lock."""
    config = session.config
    if not _is_xdist_controller(config):
        return
    from bench.engine.driver import Driver
    from bench.engine.options import Options
    from bench.tasks import get_task

    env = os.environ.get("BENCH_CACHE")
    root = config._tmp_path_factory.getbasetemp()
    cache = Path(env) if env else root / "bench-cache"
    cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    driver = Driver(Options(out=root / "warm-runs", cache=cache, progress=False), log=lambda m: None)
    digits = driver.assets(get_task("digits-class"), "smoke")
    digits.base("raw")
    digits.classifier()
    driver.assets(get_task("sd-digits"), "smoke").prepare()
    torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    env = os.environ.get("BENCH_CACHE")
    if env:
        return Path(env)
    if _WORKERS > 1:  # one cache for all xdist workers (its locks let one build and the others wait)
        root = tmp_path_factory.getbasetemp().parent / "bench-cache"
        root.mkdir(exist_ok=True)
        return root
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="session")
def driver(cache_root, tmp_path_factory):
    from bench.engine.driver import Driver
    from bench.engine.options import Options

    return Driver(Options(out=tmp_path_factory.mktemp("runs"), cache=cache_root, progress=False), log=lambda m: None)


@pytest.fixture(scope="session")
def assets(driver):
    from bench.tasks import get_task

    task = get_task("digits-class")
    a = driver.assets(task, "smoke")
    a.base("raw")
    a.classifier()
    return a


@pytest.fixture(scope="session")
def original_row(driver, assets):
    from bench.engine.driver import CellSpec

    return driver.run(CellSpec("digits-class", "original", 0, 0, "smoke"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-tensor unit tests: one intra-op thread avoids oversubscription stalls on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_net():
    from bench.models.nets import CondUNet
    from bench.tasks.digits import DIGITS

    torch.manual_seed(0)
    return CondUNet(DIGITS.unet_config, 10)


@pytest.fixture
def make_ctx(assets):
    """An UnlearnContext over the session assets, with counting enabled and no probes."""
    from bench.context import UnlearnContext
    from bench.core.measure import Counts, Stopwatch

    made = []

    def make(forget: int = 0, seed: int = 0):
        counts = Counts()
        counts.enabled = True
        ctx = UnlearnContext(assets.family(forget, seed), seed, counts, Stopwatch(assets.device), probe_fn=None,
                             n_probes=0, progress=False)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


# The longest files first, so that under pytest-xdist neither worker is left with a long file at the end
_LONGEST = ("test_resilience.py", "test_cli.py", "test_concept_conformance.py", "test_sweep.py",
            "test_conformance.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
