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
# BENCH_THREADS lets a developer run the suite beside other work without oversubscribing the cores
torch.set_num_threads(int(os.environ.get("BENCH_THREADS") or max(1, min(2, os.cpu_count() or 1))))

from bench.engine.plugins import load_all  # noqa: E402

load_all()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    env = os.environ.get("BENCH_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("bench-cache")


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
