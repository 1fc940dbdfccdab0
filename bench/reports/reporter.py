"""The report of one results folder, written from its stored cells; never recomputes anything.

Outputs under ``<out>/<task>/``: ``runs.csv`` (one wide row per cell), ``metrics_long.csv`` (one row per cell and
metric value, with the settings needed to compare values), ``table.md``/``table.tex`` (main table, 95% intervals,
spread by source, per forget class), ``table.csv``/``table_by_class.csv``/``table_spread.csv`` (the same numbers,
machine-readable), ``summary.json``, plots, ``samples/<row>.png`` and ``report.html`` (one self-contained page).
``Reporter`` keeps the rows in memory: ``update()`` after each cell reads only new cells and rewrites the text
outputs, ``finish()`` writes everything. Reading curves and sample grids lives here since only ``finish`` does it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core import store
from bench.core.errors import BenchError
from bench.core.hashing import atomic_write_text
from bench.core.store import atomic_copy_file
from bench.reports.format import _safe_name
from bench.reports.groups import _is_ref, _label_order
from bench.reports.html import report_page
from bench.reports.longform import LONG_COLUMNS, _csv_line, _long_chunk, long_rows
from bench.reports.plots import plot_curves, plot_quality_forgetting
from bench.reports.tables import _BlockCache, _csv_frames, failures_markdown
from bench.reports.views import ProfileView, _profile_view

DEFAULT_OVERLAYS = (("sfd", "pecker"), ("sa", "ebu"), ("salun", "sfron"))


def _read_curve(path: Path) -> pd.DataFrame | None:
    if not (path.is_file() and path.stat().st_size > 0):
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def _load_curves(tdir: Path, df: pd.DataFrame, cache: dict | None = None) -> pd.DataFrame:
    """Every cell's ``curve.csv`` with the identity columns; ``cache`` (cell -> frame) avoids re-reading."""
    frames = []
    if "cell" not in df:
        return pd.DataFrame()
    for _, r in df.iterrows():
        cell = str(r["cell"])
        if cache is not None and cell in cache:
            c = cache[cell]
        else:
            c = _read_curve(tdir / "runs" / cell / "curve.csv")
            if cache is not None:
                cache[cell] = c
        if c is None:
            continue
        c = c.copy()
        for col in ("method", "label", "base_seed", "seed", "forget_class"):
            c[col] = r[col]
        frames.append(c)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _sample_sources(tdir: Path, df: pd.DataFrame, suffix: str, file: str = "samples.png",
                    tag: str = "") -> list[tuple[str, str, Path]]:
    """(label, file name under samples/, source ``file``: samples.png or probes.png) per row label, in table
    order: the cell with the lowest (base seed, seed, forget class)."""
    if "cell" not in df:
        return []
    used: set[str] = set()
    out = []
    for label in _label_order(df):
        g = df[df["label"] == label].sort_values(["base_seed", "seed", "forget_class", "cell"])
        name = _safe_name(label)
        while name in used:
            name += "_"
        used.add(name)
        src = tdir / "runs" / str(g["cell"].iloc[0]) / file
        if src.is_file():
            out.append((label, f"{name}{tag}{suffix}.png", src))
    return out


def _copy_samples(tdir: Path, df: pd.DataFrame, suffix: str, file: str = "samples.png",
                  tag: str = "") -> list[tuple[str, str, Path]]:
    sources = _sample_sources(tdir, df, suffix, file, tag)
    if sources:
        (tdir / "samples").mkdir(exist_ok=True)
    for _, name, src in sources:
        atomic_copy_file(src, tdir / "samples" / name)
    return sources


def _drop_other_grids(folder: Path, written: set[str]) -> None:
    """Remove the grids of rows the table no longer has (cells removed, or rows once split by code), so that
    ``samples/`` shows what the table shows."""
    if folder.is_dir():
        for f in folder.glob("*.png"):
            if f.name not in written:
                f.unlink()


class Reporter:
    """The report of one results folder ``<out>/<task>``, kept in memory and brought up to date incrementally.

    Intended use (this is all ``bench run`` needs)::

        reporter = Reporter(out / task)
        for cell in cells:
            ...                           # run the cell (its folder is written by bench.core.store.write_cell)
            reporter.update()             # after each cell, finished or failed: cheap text outputs only
        md = reporter.finish()            # at the end: everything, returns table.md's text

    ``update(quiet=True)`` lists ``runs/`` and ``failures/`` (one directory listing each, no ``stat``), reads
    only the ``row.json`` of cells it has not seen (or whose folder was replaced: a new inode, as after
    ``--no-resume``; a folder that disappeared is dropped), keeps the rows in memory and rewrites the text
    outputs: ``runs.csv``, ``metrics_long.csv``, ``table.md``, ``table.tex``, ``table.csv``,
    ``table_by_class.csv``, ``table_spread.csv`` (with ≥ 2 base seeds) and ``summary.json``. It writes nothing
    while the folder holds neither a completed cell nor a failure record. Cells written by other processes
    (other workers sharing the folder) are picked up the same way.

    ``finish(quiet=False)`` does the same, then the plots (``curves*.png``, the overlays,
    ``quality_forgetting*.png``), the labelled sample grids ``samples/<row>.png`` and the self-contained
    ``report.html``; it prints calibration and code-mix warnings unless ``quiet``, and raises ``BenchError``
    when there are neither completed cells nor failures. It may be called again after more updates.

    Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a reader
    never sees a half-written report. ``render(tdir)`` is ``Reporter(tdir).finish()``.
    """

    def __init__(self, tdir: Path, overlays=DEFAULT_OVERLAYS) -> None:
        self.tdir = Path(tdir)
        self.out, self.task = self.tdir.parent, self.tdir.name
        self.overlays = tuple(tuple(o) for o in overlays)
        self._cells: dict[str, tuple[int, dict[str, Any]]] = {}  # folder name -> (inode, row)
        self._long: dict[str, str] = {}  # folder name -> its lines of metrics_long.csv
        self._wide: dict[str, tuple[tuple[str, ...], str]] = {}  # folder name -> (columns, its line of runs.csv)
        self._curves: dict[str, pd.DataFrame | None] = {}  # cell -> curve.csv (read by finish only)
        self._failures: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._block_cache = _BlockCache()
        self.rows_read = 0  # row.json files read so far (tests, benchmarks)
        self.views: list[ProfileView] = []

    # -- reading --------------------------------------------------------------------------------------
    def scan(self) -> list[str]:
        """Load the rows of new or replaced cell folders; return their names."""
        listing = store.scan_cells(self.out, self.task)
        for gone in set(self._cells) - set(listing):
            self._block_cache.clear()
            row = self._cells.pop(gone)[1]
            self._long.pop(gone, None)
            self._wide.pop(gone, None)
            self._curves.pop(str(row.get("cell", gone)), None)
        new = []
        for name in sorted(listing):
            ino = listing[name]
            have = self._cells.get(name)
            if have is not None and have[0] == ino:
                continue
            try:
                row = store.load_row(self.tdir / "runs" / name)
            except (OSError, ValueError):  # not complete (yet)
                continue
            finally:
                self.rows_read += 1
            if have is not None:  # replaced in place: cached blocks keyed by this cell name are stale
                self._block_cache.clear()
            self._cells[name] = (ino, row)
            self._long.pop(name, None)
            self._wide.pop(name, None)
            self._curves.pop(str(row.get("cell", name)), None)
            new.append(name)
        flist = store.scan_failures(self.out, self.task)
        for gone in set(self._failures) - set(flist):
            del self._failures[gone]
        for name, ino in flist.items():
            if self._failures.get(name, (None,))[0] != ino:
                self._failures[name] = (ino, store.load_failure(self.out, self.task, name))
        return new

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Completed rows in folder-name order."""
        return [self._cells[n][1] for n in sorted(self._cells)]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Failure records of cells that have not completed since."""
        done = {r.get("cell") for _, r in self._cells.values()}
        recs = [self._failures[n][1] for n in sorted(self._failures)]
        return [f for f in recs if f is not None and (f.get("cell") is None or f.get("cell") not in done)]

    # -- writing --------------------------------------------------------------------------------------
    def update(self, quiet: bool = True) -> str:
        """Read new cells and rewrite the text outputs; return the Markdown ('' while there is nothing)."""
        self.scan()
        return self._write_text(quiet)

    def finish(self, quiet: bool = False) -> str:
        """``update`` plus plots, sample grids and ``report.html``; return the Markdown."""
        self.scan()
        if not self._cells and not self.failures:
            raise BenchError(f"no completed runs under {self.tdir / 'runs'}")
        md = self._write_text(quiet)
        figures: dict[str, list[tuple[str, Path]]] = {}
        samples: dict[str, list[tuple[str, Path]]] = {}
        probes: dict[str, list[tuple[str, Path]]] = {}
        written: set[str] = set()
        for v in self.views:
            figures[v.profile] = self._plots(v)
            grids = _copy_samples(self.tdir, v.df, v.suffix)
            grids_probes = _copy_samples(self.tdir, v.df, v.suffix, store.PROBES_FILE, "_probes")
            samples[v.profile] = [(label, src) for label, _, src in grids]
            probes[v.profile] = [(label, src) for label, _, src in grids_probes]
            written |= {name for _, name, _ in grids + grids_probes}
        _drop_other_grids(self.tdir / "samples", written)
        page = report_page(self.task, self.views, self.failures, figures, samples, md_path="table.md",
                           probes=probes)
        atomic_write_text(self.tdir / "report.html", page)
        return md

    def _write_text(self, quiet: bool) -> str:
        rows, failures = self.rows, self.failures
        if not rows and not failures:
            self.views = []
            return ""
        tdir, task = self.tdir, self.task
        names = sorted(self._cells)
        atomic_write_text(tdir / "runs.csv", self._runs_csv(names))
        for n in names:
            if n not in self._long:
                self._long[n] = _long_chunk(long_rows(self._cells[n][1]))
        atomic_write_text(tdir / "metrics_long.csv",
                          _csv_line(list(LONG_COLUMNS)) + "".join(self._long[n] for n in names))
        md_parts, tex_parts, summary = [f"# {task}\n"], [], {}
        self.views = []
        if rows:
            df = pd.DataFrame(rows)
            if "profile" not in df:
                df["profile"] = "?"
            self._block_cache.rotate()
            for profile, dfp in df.groupby("profile", sort=False):
                v = _profile_view(task, str(profile), dfp, self._block_cache)
                self.views.append(v)
                md_parts.append(v.md)
                tex_parts.append(v.tex)
                summary[v.profile] = v.summary
                for w in [] if quiet else v.code + v.calib:
                    print(f"bench: WARNING: {w}", file=sys.stderr)
        else:
            md_parts.append("No completed runs yet.\n")
            tex_parts.append("% no completed runs yet\n")
        if failures:
            md_parts.append(failures_markdown(failures))
            summary["failures"] = [{k: f.get(k) for k in ("cell", "method", "forget_class", "base_seed", "seed",
                                                           "profile", "error", "created")} for f in failures]
            if not quiet:
                print(f"bench: WARNING: {len(failures)} cell(s) failed; see the Failures section of "
                      f"{tdir / 'table.md'}", file=sys.stderr)
        md = "\n".join(md_parts).rstrip() + "\n"

        def tagged(frames: list[tuple[str, pd.DataFrame | None]]) -> list[pd.DataFrame]:
            return [f.assign(profile=p)[["profile", *f.columns]] for p, f in frames if f is not None and not f.empty]

        atomic_write_text(tdir / "table.csv", _csv_frames(tagged([(v.profile, v.stats) for v in self.views])))
        atomic_write_text(tdir / "table_by_class.csv",
                          _csv_frames(tagged([(v.profile, v.by_class_stats) for v in self.views])))
        spread = tagged([(v.profile, v.spread_stats) for v in self.views])
        if spread:
            atomic_write_text(tdir / "table_spread.csv", _csv_frames(spread))
        atomic_write_text(tdir / "table.md", md)
        atomic_write_text(tdir / "table.tex", "\n".join(tex_parts))
        atomic_write_text(tdir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return md

    def _runs_csv(self, names: list[str]) -> str:
        """``runs.csv``: one line per cell in folder-name order, columns in first-appearance order, from
        per-cell lines cached while the column list stays the same."""
        if not names:
            return ""
        cols: dict[str, None] = {}
        for n in names:
            cols.update(dict.fromkeys(self._cells[n][1]))
        keys = tuple(cols)
        lines = [_csv_line(list(keys))]
        for n in names:
            have = self._wide.get(n)
            if have is None or have[0] != keys:
                row = self._cells[n][1]
                have = self._wide[n] = (keys, _csv_line([row.get(k, "") for k in keys]))
            lines.append(have[1])
        return "".join(lines)

    def _plots(self, v: ProfileView) -> list[tuple[str, Path]]:
        """Curves, overlays and the quality–forgetting scatter of one profile; return (caption, path) of the
        figures for the page (curves and scatter)."""
        out: list[tuple[str, Path]] = []
        task, suffix, target = self.task, v.suffix, v.target
        labels = list(v.table["method"])  # table order: one colour per row in every plot
        curves = _load_curves(self.tdir, v.df, self._curves)
        if not curves.empty:
            path = self.tdir / f"curves{suffix}.png"
            plot_curves(curves, path, title=f"{task} ({v.profile}): probe curves", target=target, labels=labels)
            out.append(("Time to forget: UA and probe FID against unlearning seconds and optimizer steps, every "
                        "cell (one colour per table row)", path))
        if {"ua", "fid"} <= set(v.df.columns):
            path = self.tdir / f"quality_forgetting{suffix}.png"
            points = v.df.assign(reference=_is_ref(v.df))[["label", "ua", "fid", "reference"]]
            plot_quality_forgetting(points, path, labels=labels, target=target,
                                    title=f"{task} ({v.profile}): quality against forgetting, one point per cell")
            out.append(("Quality against forgetting: final FID against UA, one point per cell (squares: reference "
                        "rows)", path))
        if not curves.empty:  # the overlays are files only: the page shows every method's curves already
            for names in self.overlays:
                if set(names) <= set(curves["method"]):
                    path = self.tdir / f"overlay_{'_'.join(names)}{suffix}.png"
                    plot_curves(curves, path, list(names), target=target, labels=labels,
                                title=f"{' vs '.join(names)}: same task, seeds and budget ({v.profile})")
        return out


def render(tdir: Path, overlays=DEFAULT_OVERLAYS, quiet: bool = False) -> str:
    """The full report: runs.csv, metrics_long.csv, table.md/.tex/.csv, summary.json, plots, sample grids and
    report.html under ``tdir``; return the Markdown. Raises BenchError only when there are neither completed
    runs nor recorded failures. Reads every cell: after each cell of a run use ``Reporter.update``."""
    return Reporter(tdir, overlays).finish(quiet=quiet)
