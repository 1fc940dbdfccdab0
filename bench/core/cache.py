"""The asset cache: every expensive artefact (base models, classifiers, Retrain models, reference
statistics, generated training images) lives in ``<cache>/<task>/<kind>-<hash>/``, where the hash covers
everything that determines it. A folder is built once in a temporary sibling, gets a manifest with the
SHA-256 of every file and is renamed into place; a folder whose files no longer match the manifest is
reported and rebuilt, never silently used. Class and concept tasks share this one mechanism.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from bench.core.hashing import atomic_write_json, file_sha256, make_temp_dir
from bench.core.locks import claim, exclusive, holder


def default_cache_root() -> Path:
    env = os.environ.get("BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unlearn-bench"


def manifest_ok(folder: Path) -> bool:
    man = folder / "manifest.json"
    if not man.is_file():
        return False
    try:
        data = json.loads(man.read_text())
        return all(file_sha256(folder / rel) == digest for rel, digest in data["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def build_asset(folder: Path, builder, what: str) -> dict:
    """Build an asset folder once: ``builder(tmp_dir) -> meta`` then rename into place.

    Builders of the same folder (two runs, the cells of a sweep) serialise on a lock beside the cache
    (``.locks/<folder>.lock``, see :mod:`bench.core.locks`): the first builds, the others wait and
    then load what it built. A builder killed midway leaves only a hidden temporary folder, and its
    lock is dropped by the kernel, so the next one builds the asset properly."""
    if manifest_ok(folder):
        return json.loads((folder / "manifest.json").read_text())
    lock = folder.parent / ".locks" / f"{folder.name}.lock"
    probe = claim(lock)
    if probe is None:
        print(f"bench: waiting for the {what} being built by {holder(lock)}", file=sys.stderr, flush=True)
    else:
        probe.release()
    with exclusive(lock):
        if folder.exists():
            if manifest_ok(folder):
                return json.loads((folder / "manifest.json").read_text())
            print(f"bench: cached {what} at {folder} is corrupt or incomplete; rebuilding it", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
        tmp = make_temp_dir(folder.parent, folder.name)
        try:
            meta = builder(tmp)
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            meta["files"] = {str(p.relative_to(tmp)): file_sha256(p) for p in files}
            atomic_write_json(tmp / "manifest.json", meta)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return meta
