"""The cost of ``bench sweep`` against ``bench run`` on the same grid, both end to end from the shell.

    python tests/benchmarks/sweep_overhead.py [--reps 2] [--seed 0,1,2] [--methods all]

Warms the cache first (base model, classifier, Retrain), then alternates, ``--reps`` times, a
``bench run`` of the grid, a ``bench sweep --cpus-per-cell <all cores>`` (one cell at a time, like
``bench run``) and a ``bench sweep --cpus-per-cell 1`` (one cell per core), each into a fresh results
folder, and prints wall-clock seconds, the ratio to ``bench run`` of the same repetition, and the
sweep's fixed cost (Ray start-up and the shared-asset phase, from its own log). Not part of the test
suite: it takes minutes and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return secs, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--seed", default="0,1,2")
    ap.add_argument("--task", default="digits-class")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--work", type=Path, default=None, help="folder for the results folders (default: a temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    grid = ["--methods", args.methods, "--task", args.task, "--profile", args.profile, "--seed", args.seed, "--quiet"]
    bench = [sys.executable, "-m", "bench"]
    cores = os.cpu_count() or 1

    warm, _ = timed([*bench, "run", *grid, "--out", str(work / "warm")], env)
    n = len(list((work / "warm" / args.task / "runs").iterdir()))
    print(f"grid: {' '.join(grid)} = {n} cells; warm-up (cache filled) {warm:.1f} s; {cores} cores", flush=True)
    kinds = {"bench run": ["run"], f"sweep --cpus-per-cell {cores}": ["sweep", "--cpus-per-cell", str(cores)],
             "sweep --cpus-per-cell 1": ["sweep", "--cpus-per-cell", "1"]}
    secs: dict[str, list[float]] = {k: [] for k in kinds}
    fixed: dict[str, list[float]] = {k: [] for k in kinds}
    for rep in range(args.reps):
        for i, (kind, sub) in enumerate(kinds.items()):
            s, err = timed([*bench, *sub, *grid, "--out", str(work / f"r{rep}-{i}")], env)
            secs[kind].append(s)
            m = re.search(r"shared assets ready after ([\d.]+) s", err)
            if m:
                fixed[kind].append(float(m.group(1)))
            print(f"  rep {rep}: {kind:<26} {s:7.1f} s", flush=True)
    base = secs["bench run"]
    print(f"\n{'':<26} {'mean s':>8} {'vs bench run':>13} {'extra s':>8} {'Ray start + assets s':>21}")
    for kind, values in secs.items():
        ratios = [v / b for v, b in zip(values, base)]
        extra = [v - b for v, b in zip(values, base)]
        fx = f"{statistics.mean(fixed[kind]):.1f}" if fixed[kind] else "-"
        print(f"{kind:<26} {statistics.mean(values):8.1f} {statistics.mean(ratios):13.3f} "
              f"{statistics.mean(extra):8.1f} {fx:>21}")


if __name__ == "__main__":
    main()
