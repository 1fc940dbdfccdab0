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
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.hashing import atomic_write_json, atomic_write_text

ROW_FILE = "row.json"


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


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_row: int = 8, scale: int = 4) -> None:
    """One row per class, ``per_row`` samples each, upscaled with nearest neighbours."""
    from torchvision.utils import make_grid

    picks = []
    for c in torch.unique(labels).tolist():
        sel = images[labels == c][:per_row]
        if len(sel) < per_row:
            sel = torch.cat([sel, torch.zeros((per_row - len(sel), *images.shape[1:]), dtype=images.dtype)])
        picks.append(sel)
    grid = make_grid(torch.cat(picks).float(), nrow=per_row, padding=1, pad_value=255).to(torch.uint8)
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if images.shape[1] == 1 else arr)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def write_cell(folder: Path, row: dict[str, Any], config: dict[str, Any], curve: list[dict], logs: list[dict],
               images: torch.Tensor, labels: torch.Tensor) -> None:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        atomic_write_json(tmp / "config.json", config)
        atomic_write_text(tmp / "curve.csv", _csv_text(curve))
        atomic_write_text(tmp / "log.csv", _csv_text(logs))
        save_grid(images, labels, tmp / "samples.png")
        atomic_write_json(tmp / ROW_FILE, row)
        if folder.exists():  # an incomplete leftover of a killed run: replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def collect_rows(out: Path, task: str) -> list[dict[str, Any]]:
    runs = task_dir(out, task) / "runs"
    if not runs.is_dir():
        return []
    return [load_row(d) for d in sorted(runs.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and is_complete(d)]


def write_runs_csv(out: Path, task: str) -> Path:
    path = task_dir(out, task) / "runs.csv"
    atomic_write_text(path, _csv_text(collect_rows(out, task)))
    return path
