"""``bench sweep`` on a local Ray instance: a grid of smoke cells killed mid-way and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
GRID = ["--methods", "original,ga", "--task", "digits-class", "--profile", "smoke", "--steps", "2", "--seed", "0-3"]


def _env(cache: Path) -> dict:
    return {**os.environ, "BENCH_CACHE": str(cache), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT),
            "RAY_AUTH_MODE": "disabled"}


def _complete(runs: Path) -> dict[str, str]:
    """cell name -> its row's creation time, for the complete cells."""
    out = {}
    for row in runs.glob("*/row.json"):
        if not row.parent.name.startswith("."):
            out[row.parent.name] = json.loads(row.read_text())["created"]
    return out


def _ray_processes() -> list[str]:
    # workers too: one may finish (and atomically write) its cell after the driver died, until Ray reaps it.
    # Ray's dashboard and runtime-env agents outlive a SIGKILLed driver by minutes; they run no cells.
    r = subprocess.run(["pgrep", "-af", "raylet|gcs_server|default_worker|ray::"], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if line.strip() and "Agent" not in line]


def test_sweep_killed_midway_resumes_only_the_missing_cells(cache_root, assets, tmp_path):
    out = tmp_path / "out"
    runs = out / "digits-class" / "runs"
    cmd = [sys.executable, "-m", "bench", "sweep", *GRID, "--out", str(out), "--quiet", "--cpus-per-cell", "1"]
    before_ray = set(_ray_processes())
    p = subprocess.Popen(cmd, env=_env(cache_root), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(_complete(runs)) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert p.poll() is None, "the sweep finished before it could be killed: " + p.stderr.read().decode()[-2000:]
    p.send_signal(signal.SIGKILL)  # the driver dies mid-way, with cells running on its workers
    p.wait()
    # Ray's own processes and its workers go down with the driver that started them
    for _ in range(150):
        if set(_ray_processes()) <= before_ray:
            break
        time.sleep(0.2)
    assert set(_ray_processes()) <= before_ray, _ray_processes()
    at_kill = _complete(runs)
    assert 2 <= len(at_kill) < 8, at_kill

    r = subprocess.run(cmd, env=_env(cache_root), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{len(at_kill)} already complete, {8 - len(at_kill)} to run" in r.stderr
    after = _complete(runs)
    assert len(after) == 8
    assert {k: after[k] for k in at_kill} == at_kill  # finished cells were kept, not recomputed
    rows = list(csv.DictReader(open(out / "digits-class" / "runs.csv")))
    assert sorted(row["cell"] for row in rows) == sorted(after)
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]  # no leftovers of the killed workers
    # a further sweep has nothing to do
    r = subprocess.run(cmd, env=_env(cache_root), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "8 already complete, 0 to run" in r.stderr


def test_sweep_retries_a_failing_cell_once_then_records_it(cache_root, assets, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky.py").write_text(
        "from dataclasses import dataclass\nfrom bench.method import Method, register_method\n"
        "@register_method('always-fails')\nclass AlwaysFails(Method):\n    @dataclass(frozen=True)\n"
        "    class Config:\n        iters: int = 0\n    def unlearn(self, ctx):\n"
        "        raise RuntimeError('broken on purpose')\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bench", "sweep", "--methods", "always-fails,original", "--task",
                        "digits-class", "--profile", "smoke", "--seed", "0", "--out", str(out), "--quiet",
                        "--plugins", str(plugins)], env=_env(cache_root), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "retrying once" in r.stderr and "1 complete, 1 failed" in r.stderr
    failure = json.loads(next((out / "digits-class" / "failures").glob("always-fails-*.json")).read_text())
    assert failure["attempts"] == 2 and "broken on purpose" in failure["error"]
    assert "Failures" in (out / "digits-class" / "table.md").read_text()
