"""How long a user waits for the commands that should answer at once (``bench --help``, ``bench list ...`` and
a one-line error about a name), against ``python -c "import torch"`` timed in the same run: the median of
``--reps`` runs of each, wall clock, one fresh interpreter per run.

    python tests/benchmarks/cli_latency.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "bench --help": [sys.executable, "-m", "bench", "--help"],
    "bench list methods": [sys.executable, "-m", "bench", "list", "methods"],
    "bench list tasks": [sys.executable, "-m", "bench", "list", "tasks"],
    "bench list metrics": [sys.executable, "-m", "bench", "list", "metrics"],
    "bench run --methods pekcer (typo)": [sys.executable, "-m", "bench", "run", "--methods", "pekcer", "--task",
                                          "digits-class"],
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    reps = ap.parse_args().reps
    times = {name: statistics.median(wall(cmd) for _ in range(reps)) for name, cmd in COMMANDS.items()}
    base = times['python -c "import torch"']
    print(f"| command | median wall (s), {reps} runs | ratio to import torch |\n|---|---|---|")
    for name, t in times.items():
        print(f"| `{name}` | {t:.2f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
