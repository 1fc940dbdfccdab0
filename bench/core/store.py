"""Results on disk: one folder per cell under ``<out>/<task>/runs/``, written atomically.

A cell folder is assembled in a hidden temporary sibling and renamed into place only when it is
complete, so a killed run never leaves a half-written cell; ``row.json`` inside it is the
completion marker. ``runs.csv`` is regenerated from the cell folders, never appended to.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bench.core.hashing import atomic_file, atomic_write_json, atomic_write_text, make_temp_dir, make_temp_file

ROW_FILE = "row.json"
PROBES_FILE = "probes.png"


def task_dir(out: Path, task: str) -> Path:
    return Path(out) / task


def cell_dir(out: Path, task: str, cell_name: str) -> Path:
    return task_dir(out, task) / "runs" / cell_name


def is_complete(folder: Path) -> bool:
    try:
        json.loads((folder / ROW_FILE).read_text())
        return True
    except (OSError, ValueError):
        return False


def load_row(folder: Path) -> dict[str, Any]:
    return json.loads((folder / ROW_FILE).read_text())


def _csv_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_row: int = 8, title: str = "",
              class_names: list[str] | None = None, first: int | None = None) -> None:
    """One row per class (``first``, the forget class, on top and marked), ``per_row`` samples each,
    labelled; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = torch.unique(labels).tolist()
    if first is not None and first in classes:
        classes = [first] + [c for c in classes if c != first]
    fig, axes = plt.subplots(len(classes), per_row, figsize=(0.62 * per_row + 1.4, 0.62 * len(classes) + 0.6),
                             squeeze=False)
    for r, c in enumerate(classes):
        sel = images[labels == c][:per_row]
        for k in range(per_row):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if k < len(sel):
                arr = sel[k].permute(1, 2, 0).numpy()
                ax.imshow(arr[:, :, 0] if arr.shape[2] == 1 else arr, cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
        name = class_names[c] if class_names else str(c)
        axes[r][0].set_ylabel(f"{name}{' (forget)' if c == first else ''}", rotation=0, ha="right", va="center",
                              fontsize=8, color="crimson" if c == first else "black")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # keep the title off the top row
    save_png(fig, path, dpi=100)


def save_png(fig, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as a PNG atomically (a hidden temporary file in the same folder, then
    ``os.replace``) and close it either way: the one way the harness writes images."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = make_temp_file(path.parent, path.name, ".tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def write_cell(folder: Path, row: dict[str, Any], config: dict[str, Any], curve: list[dict], logs: list[dict],
               images: torch.Tensor, labels: torch.Tensor, title: str = "",
               class_names: list[str] | None = None, probe_images: dict[str, torch.Tensor] | None = None) -> None:
    """Write a finished cell folder atomically: config, curve, log, the sample grid, the probe grid (one
    row per probe setting, when the cell ran probes) and, last, the row."""
    folder = Path(folder)
    tmp = make_temp_dir(folder.parent, folder.name)
    try:
        atomic_write_json(tmp / "config.json", config)
        atomic_write_text(tmp / "curve.csv", _csv_text(curve))
        atomic_write_text(tmp / "log.csv", _csv_text(logs))
        if len(images):  # a skipped cell has no samples
            save_grid(images, labels, tmp / "samples.png", title=title, first=row.get("forget_class"),
                      class_names=class_names)
        if probe_images:
            names = list(probe_images)
            save_grid(torch.cat([probe_images[n] for n in names]),
                      torch.cat([torch.full((len(probe_images[n]),), i) for i, n in enumerate(names)]),
                      tmp / PROBES_FILE, title=f"{title}: recovery probes", class_names=names)
        atomic_write_json(tmp / ROW_FILE, row)
        old = None
        if folder.exists():  # a leftover, or the cell being recomputed: move it aside atomically first
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(folder: Path) -> None:
    """Delete the hidden temporary folders a killed writer of this cell left beside it (call only while
    holding the cell's claim: nobody else can be writing them)."""
    folder = Path(folder)
    if folder.parent.is_dir():
        for p in folder.parent.glob(f".{folder.name}.*"):
            shutil.rmtree(p, ignore_errors=True)






def failure_path(out: Path, task: str, cell_name: str) -> Path:
    return task_dir(out, task) / "failures" / f"{cell_name}.json"


def write_failure(out: Path, task: str, cell_name: str, info: dict[str, Any]) -> Path:
    """Record a cell that raised (error, traceback, identity); a later successful run removes it."""
    path = failure_path(out, task, cell_name)
    atomic_write_json(path, info)
    return path


FAILURE_IDENTITY = ("method", "forget_class", "seed", "base_seed", "profile")


def record_failure(out: Path, task: str, cell_name: str, spec: dict[str, Any], error: str, traceback: str,
                   **extra: Any) -> Path:
    """``write_failure`` with the record every runner writes: the cell's identity (from the cell spec's
    fields), the error and its traceback, ``extra`` (e.g. ``attempts``) and the time."""
    return write_failure(out, task, cell_name, {
        "cell": cell_name, **{k: spec[k] for k in FAILURE_IDENTITY}, "error": error, "traceback": traceback,
        **extra, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def clear_failure(out: Path, task: str, cell_name: str) -> None:
    failure_path(out, task, cell_name).unlink(missing_ok=True)




# --- incremental readers and atomic copies (used by ``bench.reports.Reporter``) ----------------------
def scan_cells(out: Path, task: str) -> dict[str, int]:
    """Cell folder name -> inode, from one directory listing of ``runs/`` (no ``stat``, no file reads).

    Hidden temporary folders of cells being written are left out. A cell rewritten in place (``--no-resume``)
    gets a new folder, hence a new inode: ``write_cell`` renames a fresh temporary folder over it."""
    runs = task_dir(out, task) / "runs"
    try:
        with os.scandir(runs) as it:
            return {e.name: e.inode() for e in it if not e.name.startswith(".") and e.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def scan_failures(out: Path, task: str) -> dict[str, int]:
    """Failure record file name -> inode (records are written atomically: a rewrite gets a new inode)."""
    folder = task_dir(out, task) / "failures"
    try:
        with os.scandir(folder) as it:
            return {e.name: e.inode() for e in it if e.name.endswith(".json") and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def load_failure(out: Path, task: str, file_name: str) -> dict[str, Any] | None:
    try:
        return json.loads((task_dir(out, task) / "failures" / file_name).read_text())
    except (OSError, ValueError):
        return None




def atomic_copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (see :func:`bench.core.hashing.atomic_file`)."""
    with atomic_file(dst, "wb") as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f)
