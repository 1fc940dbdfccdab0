"""Resilience of a results folder to ``kill -9`` and to concurrent writers.

README: "a process killed at any moment leaves no half-written file that a later run trusts", a complete
cell is skipped on re-run, and two processes sharing a folder never compute the same cell (``flock``
claims under ``<out>/<task>/.claims/``, dropped by the kernel when the holder dies).

Everything goes through the command line in subprocesses, like ``tests/test_cli.py``. The kill and
concurrency tests run a thin wrapper around ``bench.cli.main`` (:data:`WRAPPER`) that only adds trace
lines to stderr (``@@compute <cell>`` when a process starts computing a cell, ``@@wrote <cell>`` once it
is written), so a test can tell exactly which process computed which cell; with ``RESILIENCE_DIE_AT`` it
also SIGKILLs itself at a fixed point of a cell's write or of a render (a kill at exactly that moment).

``pytest -s tests/test_resilience.py`` prints the figures of the random-kill iterations.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TASK = "digits-class"
#: the grid of the kill and concurrency tests: 4 smoke cells of a few seconds each
GRID = ("--task", TASK, "--profile", "smoke", "--steps", "2", "--quiet")
FULL = ("--methods", "original,ga", "--seed", "0,1")
N_CELLS = 4
N_KILLS = int(os.environ.get("RESILIENCE_KILLS", "20"))

#: runs.csv columns that legitimately differ between two runs of the same cell, so the comparison with the
#: uninterrupted reference leaves them out (every other column, identity, config, code hashes and every
#: metric, must be identical):
VOLATILE = {
    "created": "wall-clock time at which the row was written",
    "prepare_s": "wall-clock seconds (loading the cached assets)",
    "setup_s": "wall-clock seconds (a method's setup)",
    "unlearn_s": "wall-clock seconds (unlearning phase)",
    "sample_s": "wall-clock seconds (sampling)",
    "evaluate_s": "wall-clock seconds (metrics)",
    "probe_s": "wall-clock seconds spent in probes (the probe values themselves are in curve.csv)",
    "refine_s": "wall-clock seconds of the bisection probes (their count, refine_probes, is kept)",
    "time_to_target_s": "wall-clock seconds to the UA target (the steps/iters versions are kept)",
    "peak_mem_unlearn_mb": "RSS peak above the phase's start: allocator state, other processes, page cache",
    "peak_mem_sample_mb": "same, sampling phase",
    "peak_mem_evaluate_mb": "same, evaluation phase",
    "shards": "how many processes the evaluation of a concept cell was split into (the last shard to finish "
              "writes the row); the images and every value are the same",
    "git": "git revision and -dirty flag of the working tree, which others edit while the tests run",
    "git_dirty": "same",
}

WRAPPER = r'''
import os, signal, sys, time
from pathlib import Path

import bench.engine.driver as _driver
import bench.core.store as _store


def _die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


_compute = _driver.Driver._compute


def _traced(self, cell, folder):
    print(f"@@compute {cell.name}", file=sys.stderr, flush=True)
    row = _compute(self, cell, folder)
    print(f"@@wrote {cell.name}", file=sys.stderr, flush=True)
    return row


_driver.Driver._compute = _traced
_at = os.environ.get("RESILIENCE_DIE_AT", "")
if _at in ("cell-samples", "hold-in-cell"):  # inside write_cell: config, curves, log, samples written, no row.json
    _grid = _store.save_grid

    def _save_grid(*a, **k):
        _grid(*a, **k)
        if _at == "hold-in-cell":  # hold the claim until the test kills us
            print("@@holding", file=sys.stderr, flush=True)
            time.sleep(600)
        _die()

    _store.save_grid = _save_grid
elif _at == "cell-row":  # inside write_cell: the temporary folder is complete, row.json included, not renamed
    _awj = _store.atomic_write_json

    def _atomic_write_json(path, obj):
        _awj(path, obj)
        if Path(path).name == "row.json":
            _die()

    _store.atomic_write_json = _atomic_write_json
elif _at == "concept-train":  # inside a method's unlearning loop, at the start of its second iteration
    import bench.context as _context

    _steps = _context.UnlearnContext.steps

    def _dying_steps(self, n, probe=None):
        for i in _steps(self, n, probe):
            if i == 1:
                _die()
            yield i

    _context.UnlearnContext.steps = _dying_steps
elif _at == "concept-render":  # while an evaluation set is rendered: 20 images on disk, their manifest lines not
    import bench.sd.shards as _shards

    _png, _written = _shards._png, []

    def _dying_png(img, path):
        _png(img, path)
        _written.append(path)
        if len(_written) == 20:
            _die()

    _shards._png = _dying_png
elif _at == "render-plot":  # while matplotlib streams the curves plot to disk (wherever the harness points it)
    import io
    from matplotlib.figure import Figure

    _savefig = Figure.savefig

    def _half_savefig(self, fname, *a, **k):
        if isinstance(fname, (str, os.PathLike)) and "curves" in Path(fname).name:
            buf = io.BytesIO()
            _savefig(self, buf, *a, **{**k, "format": "png"})
            with open(fname, "wb") as f:
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            _die()
        return _savefig(self, fname, *a, **k)

    Figure.savefig = _half_savefig
elif _at == "render-samples":  # while a sample grid is copied into samples/ (by path or by file object)
    import shutil

    _copyfile, _copyfileobj = shutil.copyfile, shutil.copyfileobj

    def _half_copyfile(src, dst, *a, **k):
        if Path(dst).parent.name == "samples":
            data = Path(src).read_bytes()
            with open(dst, "wb") as f:
                f.write(data[: len(data) // 2])
            _die()
        return _copyfile(src, dst, *a, **k)

    def _half_copyfileobj(fsrc, fdst, *a, **k):
        name = getattr(fdst, "name", "")
        if isinstance(name, int):
            name = os.readlink(f"/proc/self/fd/{name}")
        if Path(str(name)).parent.name == "samples":
            data = fsrc.read()
            fdst.write(data[: len(data) // 2])
            fdst.flush()
            _die()
        return _copyfileobj(fsrc, fdst, *a, **k)

    shutil.copyfile, shutil.copyfileobj = _half_copyfile, _half_copyfileobj

from bench.cli import main

sys.exit(main(sys.argv[1:]))
'''


# --- helpers ----------------------------------------------------------------------------------------------
def _env(cache: Path, die: str | None = None) -> dict:
    env = {**os.environ, "BENCH_CACHE": str(cache), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RESILIENCE_DIE_AT", None)
    if die:
        env["RESILIENCE_DIE_AT"] = die
    return env


def _cmd(out: Path, *args: str, traced: bool = True, grid: tuple[str, ...] = GRID) -> list[str]:
    head = [sys.executable, "-c", WRAPPER] if traced else [sys.executable, "-m", "bench"]
    return [*head, "run", *args, *grid, "--out", str(out)]


def start(out: Path, *args: str, cache: Path, log: Path, die: str | None = None,
          grid: tuple[str, ...] = GRID) -> subprocess.Popen:
    """A traced ``bench run`` in its own session, stdout and stderr to ``log`` (.out / .err)."""
    with open(log.with_suffix(".out"), "w") as so, open(log.with_suffix(".err"), "w") as se:
        return subprocess.Popen(_cmd(out, *args, grid=grid), env=_env(cache, die), cwd=ROOT, start_new_session=True,
                                stdout=so, stderr=se)


def run(out: Path, *args: str, cache: Path, log: Path, traced: bool = True,
        die: str | None = None, grid: tuple[str, ...] = GRID) -> tuple[int, str, float]:
    """Run ``bench run`` to completion: ``(returncode, stderr, seconds)``."""
    t0 = time.monotonic()
    with open(log.with_suffix(".out"), "w") as so, open(log.with_suffix(".err"), "w") as se:
        rc = subprocess.run(_cmd(out, *args, traced=traced, grid=grid), env=_env(cache, die), cwd=ROOT, stdout=so,
                            stderr=se, timeout=600).returncode
    return rc, log.with_suffix(".err").read_text(), time.monotonic() - t0


def sigkill(p: subprocess.Popen) -> None:
    """SIGKILL the process (if still alive) and reap it, then anything left in its session."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def traced(stderr: str, what: str = "compute") -> list[str]:
    return re.findall(rf"^@@{what} (\S+)$", stderr, flags=re.M)


def task_dir(out: Path, task: str = TASK) -> Path:
    return out / task


def is_hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def complete_cells(tdir: Path) -> dict[str, tuple]:
    """Complete cells (visible folder with a parseable row.json) -> (inode, mtime_ns, created) of row.json."""
    out = {}
    runs = tdir / "runs"
    if runs.is_dir():
        for d in sorted(runs.iterdir()):
            f = d / "row.json"
            if d.name.startswith(".") or not f.is_file():
                continue
            try:
                created = json.loads(f.read_text())["created"]
            except (OSError, ValueError, KeyError):
                continue
            st = f.stat()
            out[d.name] = (st.st_ino, st.st_mtime_ns, created)
    return out


def visible_incomplete_cells(tdir: Path) -> list[str]:
    """Visible cell folders without a parseable row.json: a half-written cell a later run could take as its own."""
    runs = tdir / "runs"
    if not runs.is_dir():
        return []
    done = complete_cells(tdir)
    return [d.name for d in runs.iterdir() if not d.name.startswith(".") and d.name not in done]


def hidden_in_runs(tdir: Path) -> list[str]:
    runs = tdir / "runs"
    return sorted(d.name for d in runs.iterdir() if d.name.startswith(".")) if runs.is_dir() else []


def stale_temporaries(tdir: Path) -> list[str]:
    """Hidden files and folders outside ``runs/`` and the lock files: temporaries of killed writers (never read)."""
    if not tdir.is_dir():
        return []
    return sorted(str(p.relative_to(tdir)) for p in tdir.rglob(".*")
                  if p.parts[len(tdir.parts)] not in ("runs", ".claims", ".render.lock"))


def unparseable(tdir: Path) -> list[str]:
    """Every visible file under ``tdir`` that does not parse as what its name says, with the reason."""
    from PIL import Image

    bad = []
    if not tdir.is_dir():
        return bad
    for p in sorted(tdir.rglob("*")):
        if not p.is_file() or is_hidden(p, tdir):
            continue
        rel = str(p.relative_to(tdir))
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".csv":
                rows = list(csv.reader(io.StringIO(p.read_text(), newline="")))
                if rows and any(len(r) != len(rows[0]) for r in rows):
                    raise ValueError("ragged rows")
            elif p.suffix == ".png":
                with Image.open(p) as im:
                    im.load()
            elif p.suffix in (".md", ".tex"):
                if not p.read_text(encoding="utf-8").strip():
                    raise ValueError("empty")
            else:
                p.read_bytes()
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the finding
            bad.append(f"{rel} ({type(exc).__name__}: {exc})")
    return bad


def stable_rows(path: Path) -> tuple[list[str], list[dict]]:
    """runs.csv: (header, rows without the VOLATILE columns), rows in file order."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in reader]
        return list(reader.fieldnames or []), rows


def assert_matches_reference(tdir: Path, ref: dict, cells: list[str] | None = None) -> None:
    """runs.csv has exactly ``cells`` (default: the reference's) and equals the reference on the stable columns."""
    header, rows = stable_rows(tdir / "runs.csv")
    want = [r for r in ref["rows"] if cells is None or r["cell"] in cells]
    assert [r["cell"] for r in rows] == [r["cell"] for r in want], "runs.csv does not hold exactly the grid's cells"
    assert header == ref["header"], "runs.csv columns differ from the uninterrupted run's"
    for got, exp in zip(rows, want):
        diff = {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}
        assert not diff, f"{got['cell']}: differs from the uninterrupted run (got, expected): {diff}"


def assert_tables_hold(tdir: Path, cells: int) -> None:
    md = (tdir / "table.md").read_text()
    summary = json.loads((tdir / "summary.json").read_text())["smoke"]
    assert sum(v["cells"] for v in summary.values()) == cells, summary.keys()
    for label, entry in summary.items():
        mark = "*" if label == "original" else "**"
        assert f"| {mark}{label}{mark} | {entry['cells']} |" in md, f"table.md lacks the {label} row"


@pytest.fixture(scope="module")
def ref(tmp_path_factory, cache_root, assets):
    """The grid run once, uninterrupted, with the plain CLI: its runs.csv and duration T."""
    out = tmp_path_factory.mktemp("reference")
    rc, err, secs = run(out, *FULL, cache=cache_root, log=out / "ref", traced=False)
    assert rc == 0, err
    header, rows = stable_rows(task_dir(out) / "runs.csv")
    assert len(rows) == N_CELLS
    assert not unparseable(task_dir(out))
    return {"out": out, "T": secs, "header": header, "rows": rows, "cells": [r["cell"] for r in rows]}


# --- 1. kill -9 at random moments, then resume -------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_matches_uninterrupted_run(ref, cache_root, tmp_path):
    """N_KILLS times on ONE folder whose state carries over (claims, tables, plots, samples, any leftovers):
    start the grid, SIGKILL it at a moment uniform in [0.3 s, T], then resume it to completion. Only the
    complete cell folders are deleted before the next round, so each kill lands in a full run."""
    rng = random.Random(0)
    out = tmp_path / "killed"
    tdir = task_dir(out)
    T = ref["T"]
    records = []
    attempts = 0
    while sum(r["killed"] for r in records) < N_KILLS:
        attempts += 1
        assert attempts <= 2 * N_KILLS, "the run kept finishing before its kill time"
        i = len(records)
        if (tdir / "runs").is_dir():  # complete from the previous round: start the next round of work
            for d in (tdir / "runs").iterdir():
                if not d.name.startswith("."):
                    shutil.rmtree(d)
        kill_at = rng.uniform(0.3, T)
        log = tmp_path / f"kill{i:02d}"
        p = start(out, *FULL, cache=cache_root, log=log)
        try:
            p.wait(timeout=kill_at)
            killed = False
        except subprocess.TimeoutExpired:
            killed = True
        sigkill(p)
        kerr = log.with_suffix(".err").read_text()
        if not killed:
            assert p.returncode == 0, kerr

        # the killed state: no visible half-written cell; what is visible parses
        at_kill = complete_cells(tdir)
        half = visible_incomplete_cells(tdir)
        assert not half, f"iteration {i}: a visible, incomplete cell folder after the kill: {half}"
        leftovers = hidden_in_runs(tdir)
        corrupt_at_kill = unparseable(tdir)
        computed_by_killed = traced(kerr)
        in_flight = [c for c in computed_by_killed if c not in traced(kerr, "wrote")]

        # the resume
        rc, rerr, resume_s = run(out, *FULL, cache=cache_root, log=tmp_path / f"resume{i:02d}")
        assert rc == 0, f"iteration {i}: resume failed:\n{rerr}"
        recomputed = traced(rerr)
        after = complete_cells(tdir)
        redone = sorted(set(recomputed) & set(at_kill))
        changed = sorted(c for c in at_kill if after.get(c) != at_kill[c])
        assert not redone and not changed, f"iteration {i}: the resume recomputed complete cells {redone or changed}"
        assert sorted(recomputed) == sorted(set(ref["cells"]) - set(at_kill)), (
            f"iteration {i}: the resume computed {recomputed}, missing were {set(ref['cells']) - set(at_kill)}")
        assert sorted(after) == sorted(ref["cells"])
        assert not hidden_in_runs(tdir), f"iteration {i}: leftovers beside complete cells: {hidden_in_runs(tdir)}"
        assert not unparseable(tdir), f"iteration {i}: after the resume: {unparseable(tdir)}"
        assert_matches_reference(tdir, ref)
        assert_tables_hold(tdir, N_CELLS)
        records.append({"i": i, "kill_at": kill_at, "killed": killed, "complete": len(at_kill),
                         "in_flight": len(in_flight), "leftovers": len(leftovers), "corrupt": corrupt_at_kill,
                         "resume_s": resume_s, "recomputed": len(recomputed), "redone": len(redone),
                         "stale_tmp": len(stale_temporaries(tdir))})

    kills = [r for r in records if r["killed"]]
    lines = [f"\nkill -9 then resume, grid {' '.join(FULL)} {' '.join(GRID)}; uninterrupted run T = {T:.1f} s",
             " it  kill at (s)  killed  cells done  in flight  hidden tmp  corrupt visible  resume (s)  "
             "resume computed  recomputed done  matched"]
    for r in records:
        lines.append(f"{r['i']:3d}  {r['kill_at']:11.2f}  {'yes' if r['killed'] else 'no ':>6}  {r['complete']:10d}  "
                     f"{r['in_flight']:9d}  {r['leftovers']:10d}  {len(r['corrupt']):15d}  {r['resume_s']:10.1f}  "
                     f"{r['recomputed']:15d}  {r['redone']:15d}  yes")
    done = [r["complete"] for r in kills]
    lines.append(f"{len(kills)} kills ({len(records)} iterations): kill at {min(r['kill_at'] for r in kills):.2f}-"
                 f"{max(r['kill_at'] for r in kills):.2f} s (mean {sum(r['kill_at'] for r in kills) / len(kills):.2f});"
                 f" cells complete at kill {dict(sorted((n, done.count(n)) for n in set(done)))}; resume "
                 f"{min(r['resume_s'] for r in kills):.1f}-{max(r['resume_s'] for r in kills):.1f} s (mean "
                 f"{sum(r['resume_s'] for r in kills) / len(kills):.1f}); every resume matched the uninterrupted "
                 f"runs.csv and recomputed no complete cell; hidden temporaries of killed writers left outside runs/ "
                 f"(never read, never cleaned): {records[-1]['stale_tmp']}")
    for r in records:
        if r["corrupt"]:
            lines.append(f"  iteration {r['i']}: visible files that did not parse right after the kill (repaired by "
                         f"the resume): {r['corrupt']}")
    print("\n".join(lines))


# --- kills at fixed points of a cell's write and of a render ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("point", ["cell-samples", "cell-row", "render-plot", "render-samples"])
def test_kill_at_a_fixed_point_leaves_nothing_a_later_run_trusts(point, ref, cache_root, tmp_path):
    """The process SIGKILLs itself at ``point`` (see WRAPPER) while running one ga cell: in the middle of
    write_cell (its temporary folder half written, or complete with row.json but not renamed), or while a
    render writes the curves plot or a sample grid. Nothing visible may be half written, and the resume
    must compute exactly what is missing and match the uninterrupted run."""
    out = tmp_path / "out"
    tdir = task_dir(out)
    cell = next(c for c in ref["cells"] if c.startswith("ga-f0-b0-s0-"))
    rc, err, _ = run(out, "--methods", "ga", "--seed", "0", cache=cache_root, log=tmp_path / "killed", die=point)
    assert rc == -signal.SIGKILL, err
    half = visible_incomplete_cells(tdir)
    corrupt = unparseable(tdir)
    leftovers = hidden_in_runs(tdir)
    at_kill = complete_cells(tdir)
    if point.startswith("cell"):
        assert not at_kill and leftovers, (at_kill, leftovers)  # died inside write_cell: the cell is only hidden
    else:
        assert list(at_kill) == [cell] and not leftovers

    rc, rerr, _ = run(out, "--methods", "ga", "--seed", "0", cache=cache_root, log=tmp_path / "resume")
    assert rc == 0, rerr
    if point.startswith("cell"):
        assert traced(rerr) == [cell]
    else:  # complete before the kill: kept as it was
        assert traced(rerr) == [] and complete_cells(tdir) == at_kill
    assert not hidden_in_runs(tdir), hidden_in_runs(tdir)
    assert not unparseable(tdir), unparseable(tdir)
    assert_matches_reference(tdir, ref, [cell])

    assert not half, f"visible incomplete cell folders after the kill: {half}"
    assert not corrupt, (f"killed at {point}: visible files left half written (valid again only after the next "
                         f"render): {corrupt}")


# --- 2. concurrent writers -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("order", ["reversed", "same"])
def test_two_concurrent_runs_compute_every_cell_once(order, ref, cache_root, tmp_path):
    """A: original,ga seeds 0,1; B: the same grid, in the reverse order (ga,original seeds 1,0) or the same
    order (every cell contended), started together on one folder. Both exit 0; the union of the cells they
    computed is the grid without duplicates; runs.csv and the tables hold every cell, uncorrupted."""
    out = tmp_path / "shared"
    tdir = task_dir(out)
    b_args = ("--methods", "ga,original", "--seed", "1,0") if order == "reversed" else FULL
    pa = start(out, *FULL, cache=cache_root, log=tmp_path / "a")
    pb = start(out, *b_args, cache=cache_root, log=tmp_path / "b")
    try:
        rca, rcb = pa.wait(timeout=600), pb.wait(timeout=600)
    finally:
        sigkill(pa)
        sigkill(pb)
    ea, eb = (tmp_path / "a.err").read_text(), (tmp_path / "b.err").read_text()
    assert rca == 0, ea
    assert rcb == 0, eb
    ca, cb = traced(ea), traced(eb)
    both = ca + cb
    assert len(both) == len(set(both)), f"cells computed twice: A {ca}, B {cb}"
    assert sorted(both) == sorted(ref["cells"]), f"A computed {ca}, B {cb}"
    assert sorted(traced(ea, "wrote") + traced(eb, "wrote")) == sorted(ref["cells"])
    busy = len(re.findall(r"^    busy: ", ea + eb, flags=re.M))
    waits = len(re.findall(r"^waiting for ", ea + eb, flags=re.M))
    print(f"\nconcurrent ({order}): A computed {ca}, B computed {cb}; 'busy' messages {busy}, 'waiting for' {waits}")
    assert sorted(complete_cells(tdir)) == sorted(ref["cells"])
    assert not hidden_in_runs(tdir), hidden_in_runs(tdir)
    assert not unparseable(tdir), unparseable(tdir)
    assert_matches_reference(tdir, ref)
    assert_tables_hold(tdir, N_CELLS)


@pytest.mark.slow
def test_claim_of_a_killed_process_does_not_block_the_next_one(ref, cache_root, tmp_path):
    """A process computing a cell (claim held, its temporary folder half written) is SIGKILLed from outside;
    the claim is free at once and the next process computes the cell right away, without waiting."""
    from bench.core.locks import claim
    from bench.running.cells import claim_path

    out = tmp_path / "out"
    tdir = task_dir(out)
    cell = next(c for c in ref["cells"] if c.startswith("ga-f0-b0-s0-"))
    lock = claim_path(out, TASK, cell)
    p = start(out, "--methods", "ga", "--seed", "0", cache=cache_root, log=tmp_path / "a", die="hold-in-cell")
    try:
        deadline = time.monotonic() + 300
        while "@@holding" not in (tmp_path / "a.err").read_text():
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "a.err").read_text()
            time.sleep(0.1)
        assert claim(lock) is None, "the claim should be held while the cell is being computed"
    finally:
        sigkill(p)
    assert hidden_in_runs(tdir) and not complete_cells(tdir)
    c = claim(lock)  # free the moment its holder died
    assert c is not None, "a SIGKILLed process's claim still blocks the cell"
    c.release()
    rc, err, secs = run(out, "--methods", "ga", "--seed", "0", cache=cache_root, log=tmp_path / "b")
    assert rc == 0, err
    assert traced(err) == [cell]
    assert "busy" not in err and "waiting for" not in err, err
    assert not hidden_in_runs(tdir), hidden_in_runs(tdir)
    assert not unparseable(tdir), unparseable(tdir)
    assert_matches_reference(tdir, ref, [cell])


# --- 2b. concept cells: killed while training and while rendering ------------------------------------------
CONCEPT = "sd-digits"
#: two concept cells on the harness-trained sd-digits model: the base model (rendering only) and GA (training,
#: probes and bisection, then rendering); ``--steps 4`` keeps the training short but over several probes
CONCEPT_GRID = ("--task", CONCEPT, "--profile", "smoke", "--steps", "4", "--quiet")
CONCEPT_FULL = ("--methods", "original,ga", "--seed", "0")
N_CONCEPT_KILLS = max(2, N_KILLS // 4)


@pytest.fixture(scope="module")
def concept_ref(tmp_path_factory, cache_root, driver):
    from bench.tasks import get_task

    # the model is built first, so the reference time (the range of kill times) is a cell's, not a build's
    driver.assets(get_task(CONCEPT), "smoke").prepare()
    out = tmp_path_factory.mktemp("concept-reference")
    rc, err, secs = run(out, *CONCEPT_FULL, cache=cache_root, log=out / "ref", traced=False, grid=CONCEPT_GRID)
    assert rc == 0, err
    header, rows = stable_rows(task_dir(out, CONCEPT) / "runs.csv")
    by = {r["method"]: r for r in rows}
    assert sorted(by) == ["ga", "original"] and by["ga"]["grad_steps"] == "4" and by["original"]["kind"] == "concept"
    return {"out": out, "T": secs, "header": header, "rows": rows, "cells": [r["cell"] for r in rows]}


def _concept_resume(out: Path, cache: Path, log: Path, *extra: str) -> str:
    rc, err, _ = run(out, *CONCEPT_FULL, *extra, cache=cache, log=log, grid=CONCEPT_GRID)
    assert rc == 0, err
    return err


def _assert_concept_complete(tdir: Path, ref: dict) -> None:
    assert sorted(complete_cells(tdir)) == sorted(ref["cells"])
    assert not hidden_in_runs(tdir), hidden_in_runs(tdir)
    assert not visible_incomplete_cells(tdir), visible_incomplete_cells(tdir)
    assert not unparseable(tdir), unparseable(tdir)
    assert_matches_reference(tdir, ref)
    assert_tables_hold(tdir, len(ref["cells"]))


@pytest.mark.slow
def test_concept_cells_killed_at_random_moments_resume_to_the_uninterrupted_values(concept_ref, cache_root,
                                                                                   tmp_path):
    """As the class test above, on concept cells: a kill lands while the model trains, while an evaluation set
    is rendered or while the cell is written; the resume recomputes what is missing (reusing the trained UNet
    and the rendered images it finds) and every stable column equals the uninterrupted run's."""
    rng = random.Random(1)
    out = tmp_path / "killed"
    tdir = task_dir(out, CONCEPT)
    kills = attempts = 0
    while kills < N_CONCEPT_KILLS:
        attempts += 1
        assert attempts <= 3 * N_CONCEPT_KILLS, "the run kept finishing before its kill time"
        if (tdir / "runs").is_dir():
            for d in (tdir / "runs").iterdir():
                if not d.name.startswith("."):
                    shutil.rmtree(d)
        p = start(out, *CONCEPT_FULL, cache=cache_root, log=tmp_path / f"kill{attempts}", grid=CONCEPT_GRID)
        try:
            p.wait(timeout=rng.uniform(0.3, concept_ref["T"]))
        except subprocess.TimeoutExpired:
            kills += 1
        sigkill(p)
        assert not visible_incomplete_cells(tdir), visible_incomplete_cells(tdir)
        at_kill = complete_cells(tdir)
        err = _concept_resume(out, cache_root, tmp_path / f"resume{attempts}")
        assert not set(traced(err)) & set(at_kill), "the resume recomputed complete cells"
        _assert_concept_complete(tdir, concept_ref)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["concept-train", "concept-render"])
def test_concept_cell_killed_while_training_or_rendering_resumes_to_the_same_values(point, concept_ref, cache_root,
                                                                                     tmp_path):
    """SIGKILL inside GA's training loop (nothing saved yet: the resume trains again, from the start) or while
    an evaluation set is being rendered (the trained UNet and 19 of 20 images are on disk, their manifest lines
    not yet: the resume reuses the UNet and renders what the manifest does not vouch for)."""
    out = tmp_path / "out"
    tdir = task_dir(out, CONCEPT)
    rc, err, _ = run(out, *CONCEPT_FULL, cache=cache_root, log=tmp_path / "killed", die=point, grid=CONCEPT_GRID)
    assert rc == -signal.SIGKILL, err
    assert not visible_incomplete_cells(tdir), visible_incomplete_cells(tdir)
    done = list(complete_cells(tdir))
    err = _concept_resume(out, cache_root, tmp_path / "resume")
    assert not set(traced(err)) & set(done)
    if point == "concept-render":  # GA's UNet was saved before rendering: the resume does not train it again
        ga = next(c for c in concept_ref["cells"] if c.startswith("ga-"))
        assert ga not in complete_cells(tdir) or "reusing the unlearned UNet" in err
    _assert_concept_complete(tdir, concept_ref)


@pytest.mark.slow
def test_sharded_concept_rendering_killed_then_assembled_matches_the_unsharded_run(concept_ref, cache_root,
                                                                                    tmp_path):
    """``--shard 0/2`` killed mid-render, run again; ``--shard 1/2``; then the plain command assembles the cells:
    the same rows as one uninterrupted, unsharded process."""
    out = tmp_path / "out"
    tdir = task_dir(out, CONCEPT)
    rc, err, _ = run(out, *CONCEPT_FULL, "--shard", "0/2", cache=cache_root, log=tmp_path / "k0",
                     die="concept-render", grid=CONCEPT_GRID)
    assert rc == -signal.SIGKILL, err
    for i, shard in enumerate(("0/2", "1/2")):
        err = _concept_resume(out, cache_root, tmp_path / f"s{i}", "--shard", shard)
        assert "waiting for other shards" in err or "still missing" in err or complete_cells(tdir), err
    assert not visible_incomplete_cells(tdir), visible_incomplete_cells(tdir)
    _concept_resume(out, cache_root, tmp_path / "assemble")
    _assert_concept_complete(tdir, concept_ref)


# --- 3. the claim primitive ---------------------------------------------------------------------------------
HOLDER = r"""
import sys
from bench.core.locks import claim
path = sys.argv[1]
c = claim(path)
print("held" if c else "busy", flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        c.release()
        print("released", flush=True)
    elif line.strip() == "claim":
        c = claim(path)
        print("held" if c else "busy", flush=True)
"""
PROBE = r"""
import sys
from bench.core.locks import claim, holder
c = claim(sys.argv[1], wait=sys.argv[2] == "wait")
print("got" if c else "busy " + holder(sys.argv[1]), flush=True)
"""


def _probe(path: Path, wait: bool = False, **kw):
    cmd = [sys.executable, "-c", PROBE, str(path), "wait" if wait else "nowait"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kw.get("background"):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).stdout.strip()


def test_claim_excludes_other_processes_until_release_or_death(tmp_path):
    path = tmp_path / ".claims" / "cell.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _probe(path).startswith(f"busy pid {holder.pid}@"), "the claim file should name its holder"
        waiter = _probe(path, wait=True, background=True)
        time.sleep(1.0)
        assert waiter.poll() is None, "a waiting claim returned while another process held it"
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        assert waiter.communicate(timeout=30)[0].strip() == "got"  # woke up on release; holder still alive
        assert holder.poll() is None
        assert _probe(path) == "got"

        holder.stdin.write("claim\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "held"
        assert _probe(path).startswith("busy ")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        t0 = time.monotonic()
        assert _probe(path) == "got", "the claim of a SIGKILLed process still blocks"
        assert _probe(path, wait=True) == "got"
        assert time.monotonic() - t0 < 30
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


# --- shared asset cache: two builders, and a builder killed midway -------------------------------------------
BUILD = r"""
import json, os, signal, sys, time
from pathlib import Path
from bench.core.cache import build_asset
folder, log, die = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "die"

def builder(tmp):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    (tmp / "weights.bin").write_bytes(os.urandom(1 << 16))
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(2.0)
    return {"built_by": os.getpid()}

print("ready", flush=True)
sys.stdin.readline()  # go: every builder has imported bench.assets (torch) by now
print(json.dumps(build_asset(folder, builder, "test asset")), flush=True)
"""


def _builders(folder: Path, log: Path, n: int, die: bool = False) -> list[subprocess.CompletedProcess]:
    """``n`` processes that call ``build_asset`` on ``folder`` at the same moment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ps = [subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(log), "die" if die else "ok"], env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(n)]
    for p in ps:
        assert p.stdout.readline().strip() == "ready", p.communicate()[1]
    for p in ps:
        p.stdin.write("go\n")
        p.stdin.flush()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in ps]


def test_concurrent_asset_builds_build_once(tmp_path):
    """Two cold-cache runs started together need the same asset: ``build_asset`` must build it once and give both
    the same folder (bench/core/locks.py: concurrent runs never "build the same asset twice")."""
    from bench.core.cache import manifest_ok

    folder, log = tmp_path / "cache" / "base-0123", tmp_path / "builds.log"
    results = _builders(folder, log, 2)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    metas = [json.loads(r.stdout) for r in results]
    assert metas[0] == metas[1] and manifest_ok(folder)
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".") and p.name != ".locks"]
    builds = log.read_text().split()
    assert len(builds) == 1, f"the asset was built {len(builds)} times, by pids {builds}; kept: {metas[0]['built_by']}"


def test_asset_build_killed_midway_is_not_trusted(tmp_path):
    """A builder SIGKILLed with its weights half written leaves only a hidden temporary folder; the next
    run builds the asset properly instead of using it."""
    from bench.core.cache import manifest_ok

    folder, log = tmp_path / "cache" / "base-0123", tmp_path / "builds.log"
    (r,) = _builders(folder, log, 1, die=True)
    assert r.returncode == -signal.SIGKILL
    assert not folder.exists()
    (r,) = _builders(folder, log, 1)
    assert r.returncode == 0, r.stderr
    assert manifest_ok(folder) and json.loads(r.stdout)["built_by"] == int(log.read_text().split()[-1])


# --- atomic writes keep ordinary permissions ------------------------------------------------------------------
def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Temporary files and folders are made 0600/0700 by mkstemp/mkdtemp; once renamed into place, results and
    cached assets must have what an ordinary open/mkdir gives under the umask, or other users and machines of a
    shared file system cannot read them."""
    from bench.core.hashing import atomic_write_text, make_temp_dir
    from bench.core.store import atomic_copy_file

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "table.md", "x\n")
        atomic_copy_file(tmp_path / "table.md", tmp_path / "copy" / "table.md")
        folder = make_temp_dir(tmp_path, "cell")
        os.umask(0o027)
        atomic_write_text(tmp_path / "group.md", "x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "table.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "copy" / "table.md").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "group.md").stat().st_mode & 0o777 == 0o640
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p != folder]


def test_atomic_file_needs_a_path_and_says_its_mode(tmp_path):
    """A file handle passed where a path belongs once wrote files named ``<_io.TextIOWrapper ...>`` into the
    checkout: ``atomic_file`` takes only paths, and text or bytes is always said."""
    from bench.core.hashing import atomic_file

    with pytest.raises(TypeError):
        atomic_file(tmp_path / "a.txt").__enter__()  # no mode
    with open(tmp_path / "handle.txt", "w") as handle, pytest.raises(TypeError, match="needs a path"):
        atomic_file(handle, "w").__enter__()
    with pytest.raises(ValueError, match="'w' or 'wb'"):
        atomic_file(tmp_path / "a.txt", "a").__enter__()
    with atomic_file(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "handle.txt"]
