"""Finding a data set: where to look, in which order, and the decoded-array cache.

Search order for :func:`resolve_dataset`:

1. ``data_root`` if given: the data itself (an archive, a folder) or a folder holding it under one of
   the usual names (``cifar-10-batches-py/``, ``stl10_binary.tar.gz``, ``FashionMNIST/raw/``, ...);
   a ``data_root`` that does not exist is an error, one that holds nothing for this data set is passed
   over (one folder can serve several tasks);
2. ``$BENCH_DATA`` (any data set), then well-known places (Debian's ``/usr/share/datasets/fashion-mnist/``
   from ``apt-get install dataset-fashion-mnist``), then ``<cache_root>/downloads/`` (an earlier download);
3. the decoded-array cache ``<cache_root>/data/<variant>-<sha12>.npz`` (the variant starts with the data
   set's name, e.g. ``cifar10-official-0123456789ab.npz``), alone: so a run can go on after its source
   has been moved away. Several cached decodes for one data set (two variants, or a source that
   changed) are never chosen between silently: that is an error unless ``variant`` picks one;
4. a torchvision download into ``<cache_root>/downloads/``, only with ``allow_download=True``.

A source found in 1 or 2 is decoded once: the arrays go to the cache (written atomically, with a JSON
sidecar recording source, variant, sha256 and details) and later runs whose source is unchanged (same
files, sizes and modification times) load the cache instead. Every load from the cache re-verifies
the arrays' sha256; an entry that fails is ignored (and rewritten when its source is there).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.errors import BenchError
from bench.core.hashing import atomic_file, atomic_write_json, content_hash
from bench.datasets.readers import (
    CIFAR10_MD5,
    CLASS_NAMES,
    IDX_FILES,
    STL10_MD5,
    ImageSet,
    arrays_sha256,
    find_idx_file,
    is_tar,
    read_cifar10_batches,
    read_fashion_mnist_idx,
    read_image_folder,
    read_stl10_binary,
    tar_kind,
)

DATASETS = tuple(CLASS_NAMES)
ENV_VAR = "BENCH_DATA"
CACHE_FORMAT = 1  # bump when a reader's output changes, so stale decodes are not reused
WELL_KNOWN: dict[str, tuple[Path, ...]] = {
    "cifar10": (),
    "stl10": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
# the usual names of a data set inside a folder, in order of preference (extracted before archives,
# official files before copies); folders among them are looked into once more (torchvision roots)
CHILDREN: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10", "cifar-10", "CIFAR10",
                "cifar10-jpeg75", "cifar10-jpeg75.tar.gz"),
    "stl10": ("stl10_binary", "stl10_binary.tar.gz", "stl10", "stl-10", "STL10"),
    "fashion-mnist": ("FashionMNIST", "raw", "fashion-mnist", "fashion_mnist"),
}
_KINDS = {
    "cifar10": ("cifar10-batches", "imagefolder"),
    "stl10": ("stl10-binary", "imagefolder"),
    "fashion-mnist": ("idx", "imagefolder"),
}
_KEYS = ("train_x", "train_y", "test_x", "test_y")
_HOWTO = {
    "cifar10": "pass --data-root PATH pointing at cifar-10-python.tar.gz or cifar-10-batches-py/ (from "
               "https://www.cs.toronto.edu/~kriz/cifar.html) or a folder holding one, or at an image-folder "
               "tree train/<class>/*.png + test/<class>/*.png (or a .tar.gz of one), or set BENCH_DATA to "
               "such a folder",
    "stl10": "pass --data-root PATH pointing at stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, "
             "test_y.bin) or stl10_binary.tar.gz (from https://cs.stanford.edu/~acoates/stl10/) or a folder "
             "holding one, or at an image-folder tree train/<class>/*.png + test/<class>/*.png, or set "
             "BENCH_DATA to such a folder",
    "fashion-mnist": "apt-get install dataset-fashion-mnist (it installs /usr/share/datasets/fashion-mnist/), "
                     "or pass --data-root PATH pointing at a folder with {train,t10k}-{images-idx3,labels-idx1}"
                     "-ubyte[.gz] (or torchvision's FashionMNIST/raw/), or at an image-folder tree "
                     "train/<class>/*.png + test/<class>/*.png, or set BENCH_DATA to such a folder",
}


def check_name(name: str) -> str:
    if name not in CLASS_NAMES:
        raise BenchError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    return name


# ------------------------------------------------------------------------------------------- finding

def identify(path: Path, name: str) -> tuple[str, Path] | None:
    """``(kind, path to read)`` if ``path`` itself is data set ``name`` in a format we read, else None."""
    path = Path(path)
    if path.is_file():
        if is_tar(path):
            kind = tar_kind(path)
            if kind == "idx" and name == "fashion-mnist":
                raise BenchError(f"archive {str(path)!r} holds IDX files: extract it and pass the folder instead")
            return (kind, path) if kind in _KINDS[name] else None
        if name == "fashion-mnist" and path.name.removesuffix(".gz") in IDX_FILES:
            return "idx", path.parent
        return None
    if not path.is_dir():
        return None
    if name == "cifar10" and any((path / n).is_file() for n in CIFAR10_MD5):
        return "cifar10-batches", path
    if name == "stl10" and any((path / n).is_file() for n in STL10_MD5):
        return "stl10-binary", path
    if name == "fashion-mnist" and any(find_idx_file(path, b) for b in IDX_FILES):
        return "idx", path
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "imagefolder", path
    return None


def probe(root: Path, name: str, depth: int = 2) -> tuple[str, Path] | None:
    """``root`` itself, else the usual names inside it (two levels deep), first match wins."""
    found = identify(root, name)
    if found or depth <= 0 or not Path(root).is_dir():
        return found
    for child in CHILDREN[name]:
        p = Path(root) / child
        if p.exists():
            found = probe(p, name, depth - 1)
            if found:
                return found
    return None


def places(name: str, data_root: Path | None, cache_root: Path) -> list[tuple[Path, str]]:
    """The folders (or files) searched before the cache, in order, each with why it is searched."""
    out: list[tuple[Path, str]] = []
    if data_root is not None:
        out.append((Path(data_root).expanduser().absolute(), "--data-root"))
    env = os.environ.get(ENV_VAR)
    if env:
        out.append((Path(env).expanduser().absolute(), f"${ENV_VAR}"))
    out.extend((p, "well-known place") for p in WELL_KNOWN.get(name, ()))
    out.append((Path(cache_root).absolute() / "downloads", "earlier download"))
    return out


_READERS = {
    "cifar10-batches": lambda p, name: read_cifar10_batches(p),
    "stl10-binary": lambda p, name: read_stl10_binary(p),
    "idx": lambda p, name: read_fashion_mnist_idx(p),
    "imagefolder": read_image_folder,
}


def read_source(kind: str, path: Path, name: str) -> ImageSet:
    return _READERS[kind](path, name)


def fingerprint(kind: str, path: Path) -> str:
    """A hash of what a source is made of (paths, sizes, modification times), without reading it."""
    path = Path(path).resolve()
    if path.is_file():
        files = [path]
    elif kind == "cifar10-batches":
        files = [path / n for n in CIFAR10_MD5]
    elif kind == "stl10-binary":
        files = [path / n for n in STL10_MD5]
    elif kind == "idx":
        files = [find_idx_file(path, b) or path / b for b in IDX_FILES]
    else:
        files = sorted(p for s in ("train", "test") if (path / s).is_dir() for p in (path / s).rglob("*"))
    entries = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        if f.is_file():
            entries.append([f.name if f == path else str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return content_hash({"kind": kind, "path": str(path), "files": entries, "format": CACHE_FORMAT}, n=32)


# --------------------------------------------------------------------------------------------- cache

def cache_dir(cache_root: Path) -> Path:
    return Path(cache_root) / "data"


def cache_paths(cache_root: Path, variant: str, sha256: str) -> tuple[Path, Path]:
    """``(<variant>-<sha12>.npz, <variant>-<sha12>.json)``; every variant name starts with its data set."""
    stem = f"{variant}-{sha256[:12]}"
    return cache_dir(cache_root) / f"{stem}.npz", cache_dir(cache_root) / f"{stem}.json"


class _CacheInvalid(Exception):
    pass


def cache_entries(cache_root: Path, name: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The readable sidecars in the cache (for data set ``name``), sorted by file name."""
    d = cache_dir(cache_root)
    out = []
    for meta_path in sorted(d.glob("*.json")) if d.is_dir() else ():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT
                and (name is None or meta.get("name") == name)
                and isinstance(meta.get("variant"), str) and isinstance(meta.get("sha256"), str)):
            out.append((meta_path, meta))
    return out


def load_cache_entry(meta_path: Path, meta: dict[str, Any]) -> ImageSet:
    npz = meta_path.with_suffix(".npz")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = [z[k] for k in _KEYS]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _CacheInvalid(f"{npz}: unreadable ({type(exc).__name__})") from None
    sha = arrays_sha256(*arrays)
    if sha != meta["sha256"] or not npz.name.startswith(f"{meta['variant']}-{sha[:12]}"):
        raise _CacheInvalid(f"{npz}: sha256 mismatch (file changed or corrupt)")
    details = dict(meta.get("details") or {})
    details.update({"decoded_from": meta.get("source"), "cache": str(npz)})
    return ImageSet(*arrays, source=f"cache:{npz}", variant=meta["variant"], sha256=sha, details=details)


def write_cache(s: ImageSet, name: str, cache_root: Path, fp: str | None) -> Path | None:
    """Store ``s`` in the cache (atomically) and record source fingerprint ``fp`` in its sidecar; a cache
    that cannot be written only costs a re-decode next time, so that is a warning."""
    npz, meta_path = cache_paths(cache_root, s.variant, s.sha256)
    sources = []
    try:
        old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if isinstance(old, dict) and old.get("sha256") == s.sha256:
            sources = [x for x in old.get("sources", []) if isinstance(x, dict) and x.get("fingerprint") != fp]
    except (OSError, ValueError):
        pass
    if fp is not None:
        sources = [{"path": s.source, "fingerprint": fp}, *sources][:8]
    try:
        with atomic_file(npz, "wb") as f:
            np.savez(f, **s.arrays)
        atomic_write_json(meta_path, {"format": CACHE_FORMAT, "name": name, "variant": s.variant,
                                      "sha256": s.sha256, "source": s.source, "details": s.details,
                                      "shapes": {k: list(v.shape) for k, v in s.arrays.items()},
                                      "sources": sources})
    except OSError as exc:
        warnings.warn(f"could not cache the decoded {name} arrays in {str(cache_dir(cache_root))!r}: {exc}",
                      stacklevel=3)
        return None
    return npz


def _cached_for(fp: str, name: str, cache_root: Path) -> ImageSet | None:
    for meta_path, meta in cache_entries(cache_root, name):
        if any(isinstance(x, dict) and x.get("fingerprint") == fp for x in meta.get("sources", [])):
            try:
                return load_cache_entry(meta_path, meta)
            except _CacheInvalid:
                continue
    return None


def _load_source(kind: str, path: Path, name: str, cache_root: Path) -> ImageSet:
    fp = fingerprint(kind, path)
    hit = _cached_for(fp, name, cache_root)
    if hit is not None:
        return hit
    s = read_source(kind, path, name)
    write_cache(s, name, cache_root, fp)
    return s


def _check_variant(s: ImageSet, variant: str | None) -> ImageSet:
    if variant is not None and s.variant != variant:
        where = s.details.get("decoded_from") or s.source
        raise BenchError(f"{where} holds variant {s.variant!r}, but {variant!r} was asked for; results on "
                         "different variants are never mixed: point --data-root at the right copy")
    return s


def _download(name: str, root: Path) -> None:
    """torchvision's downloader (verifies md5s and extracts into ``root``)."""
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise BenchError("downloading needs torchvision, which is not installed") from None
    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "cifar10":
            tvd.CIFAR10(str(root), train=True, download=True)
        elif name == "stl10":
            tvd.STL10(str(root), split="train", download=True)
        else:
            tvd.FashionMNIST(str(root), train=True, download=True)
    except Exception as exc:  # network errors, md5 failures, full disks: all the user's to fix
        raise BenchError(f"downloading {name} into {str(root)!r} failed: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------------------- resolve

def resolve_dataset(name: str, data_root: Path | None, cache_root: Path, *, allow_download: bool = False,
                    variant: str | None = None) -> ImageSet:
    """Find, read (or load from the cache) and return data set ``name`` ("cifar10", "stl10",
    "fashion-mnist"); see the module docstring for the search order. ``variant`` (e.g.
    "cifar10-official") refuses any other variant and picks among several cached ones."""
    check_name(name)
    cache_root = Path(cache_root).expanduser()
    if data_root is not None and not Path(data_root).expanduser().exists():
        raise BenchError(f"--data-root {str(data_root)!r} does not exist")
    looked: list[str] = []
    for place, why in places(name, data_root, cache_root):
        looked.append(f"{place} ({why})")
        found = probe(place, name)
        if found:
            return _check_variant(_load_source(*found, name, cache_root), variant)

    cache_note = f"the decoded-array cache {cache_dir(cache_root)}"
    entries = [(p, m) for p, m in cache_entries(cache_root, name) if variant is None or m["variant"] == variant]
    if len(entries) > 1:
        listing = "; ".join(f"{p.with_suffix('.npz').name} (variant {m['variant']}, from {m.get('source')})"
                            for p, m in entries)
        raise BenchError(f"no {name} source found, and the cache {str(cache_dir(cache_root))!r} holds several "
                         f"decodes: {listing}; pass --data-root to say which data to use, ask for one variant, "
                         "or delete the stale .npz/.json pairs")
    if entries:
        try:
            return load_cache_entry(*entries[0])
        except _CacheInvalid as exc:
            cache_note += f" (ignored {exc})"

    if allow_download:
        root = cache_root / "downloads"
        _download(name, root)
        found = probe(root, name)
        if found:
            return _check_variant(_load_source(*found, name, cache_root), variant)
        looked.append(f"{root} (download)")
    wanted = f" of variant {variant!r}" if variant else ""
    more = "" if allow_download else "; or allow a torchvision download"
    raise BenchError(f"no {name} data{wanted} found; looked in {', '.join(looked)}, each as the data itself and "
                     f"for {', '.join(CHILDREN[name])} inside it, and in {cache_note}. To get it: "
                     f"{_HOWTO[name]}{more}")
