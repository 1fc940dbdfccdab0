"""Sharded, resumable rendering of evaluation sets.

Each image is written as ``<folder>/<set>/<case_number>_<k>.png`` (atomically) and then appended to the
set's ``manifest.csv`` with its SHA-256. A rerun skips every request whose PNG is present with the recorded
hash, so a killed evaluation continues where it stopped; ``shard=(i, n)`` renders only the rows ``i::n`` of
each set (rows, not images, so a row's images stay together), which lets several processes, GPUs or
machines split one evaluation. ``render.json`` holds what the images depend on (the weights and sampler);
a folder rendered for something else is cleared rather than mixed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core.hashing import atomic_write_json, file_sha256, make_temp_file

FIELDS = ("case_number", "k", "prompt", "seed", "guidance", "file", "sha256")


def _png(img: torch.Tensor, path: Path) -> None:
    tmp = make_temp_file(path.parent, path.name, ".tmp.png")
    try:
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_png(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def manifest_name(shard: tuple[int, int]) -> str:
    """One manifest per shard, so processes rendering side by side never append to the same file."""
    return "manifest.csv" if shard == (0, 1) else f"manifest-{shard[0]}of{shard[1]}.csv"


def _done(set_dir: Path) -> dict[tuple[int, int], str]:
    """Requests already rendered: (case_number, k) -> file name, for manifest lines whose PNG matches."""
    out: dict[tuple[int, int], str] = {}
    for man in sorted(set_dir.glob("manifest*.csv")):
        _read_manifest(man, set_dir, out)
    return out


def _read_manifest(man: Path, set_dir: Path, out: dict) -> None:
    with man.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            try:
                key, name, digest = (int(rec["case_number"]), int(rec["k"])), str(rec["file"]), str(rec["sha256"])
            except (KeyError, TypeError, ValueError):
                continue  # a line cut by a kill
            if rec.get("file") is None or rec.get("sha256") is None:
                continue
            path = set_dir / name
            if path.is_file() and len(digest) == 64 and file_sha256(path) == digest:
                out[key] = name


def prepare(folder: Path, key: dict) -> None:
    """Start or continue rendering in ``folder`` for ``key`` (clears images rendered for another key)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "render.json"
    if marker.is_file():
        try:
            same = json.loads(marker.read_text()) == json.loads(json.dumps(key, sort_keys=True, default=str))
        except ValueError:
            same = False
        if same:
            return
        for child in folder.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
    atomic_write_json(marker, json.loads(json.dumps(key, sort_keys=True, default=str)))


def shard_requests(requests, shard: tuple[int, int]):
    i, n = shard
    cases = list(dict.fromkeys(r.case_number for r in requests))
    mine = set(cases[i::n])
    return [r for r in requests if r.case_number in mine]


def render_set(render: Callable[[list], torch.Tensor], eval_set, folder: Path, shard: tuple[int, int] = (0, 1),
               batch: int = 16, progress: Callable[[int], None] | None = None) -> int:
    """Render this shard's missing images of ``eval_set`` in batches; returns how many were rendered."""
    set_dir = folder / eval_set.name
    set_dir.mkdir(parents=True, exist_ok=True)
    done = _done(set_dir)
    todo = [r for r in shard_requests(eval_set.requests, shard) if (r.case_number, r.k) not in done]
    man = set_dir / manifest_name(shard)
    new_file = not man.is_file() or man.stat().st_size == 0
    if not new_file:  # a line cut by a kill must not swallow the next record
        with man.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
        if cut:
            with man.open("a") as fh:
                fh.write("\n")
    with man.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n")
        if new_file:
            w.writeheader()
        for s in range(0, len(todo), batch):
            chunk = todo[s:s + batch]
            imgs = render(chunk)
            for r, img in zip(chunk, imgs):
                name = f"{r.case_number}_{r.k}.png"
                _png(img, set_dir / name)
                w.writerow({"case_number": r.case_number, "k": r.k, "prompt": r.prompt, "seed": r.seed,
                            "guidance": r.guidance, "file": name, "sha256": file_sha256(set_dir / name)})
            fh.flush()
            if progress is not None:
                progress(len(chunk))
    return len(todo)


def collect(eval_set, folder: Path) -> torch.Tensor | None:
    """Every image of ``eval_set`` in request order, or None while some shard is still missing."""
    set_dir = folder / eval_set.name
    done = _done(set_dir)
    if any((r.case_number, r.k) not in done for r in eval_set.requests):
        return None
    return torch.stack([read_png(set_dir / done[(r.case_number, r.k)]) for r in eval_set.requests])


def missing(eval_set, folder: Path) -> int:
    done = _done(folder / eval_set.name)
    return sum((r.case_number, r.k) not in done for r in eval_set.requests)
