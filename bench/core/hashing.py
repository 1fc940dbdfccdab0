"""Content hashes for caches and cell ids, and atomic file writes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return canonical(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return "nan"
    return obj


def content_hash(obj: Any, n: int = 16) -> str:
    blob = json.dumps(canonical(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, name: str) -> Path:
    """A hidden temporary folder ``parent/.name.*`` to build in and rename into place, with the
    permissions of a normal ``mkdir`` (``mkdtemp`` makes it 0700)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def make_temp_file(parent: Path, name: str, suffix: str = ".tmp") -> Path:
    """A hidden, empty temporary file ``parent/.name.*suffix`` with a normal file's permissions."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str) -> Iterator[IO]:
    """Write ``path`` through a temporary file in its folder, fsync it and ``os.replace`` it into place:
    a reader, or a run after a crash, sees the old file or the new one, never half of one. The file
    gets the permissions of a normal ``open`` (``mkstemp`` makes them 0600), so results and caches on
    a shared file system stay readable by the other users and machines.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes), always said: a text handle passed on to a writer that
    expects a path or bytes is how files named ``<_io.TextIOWrapper ...>`` once appeared in the checkout."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode must be 'w' or 'wb', not {mode!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"atomic_file needs a path, not {type(path).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(canonical(obj), indent=2, default=str) + "\n")


def folder_sha256(folder: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """SHA-256 over the relative names and SHA-256s of a folder's files (those with ``suffixes`` when given),
    in sorted order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and (suffixes is None or p.suffix in suffixes)):
        h.update(str(f.relative_to(folder)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def user_model_hash(path: Path) -> str:
    """SHA-256 of a user's checkpoint file, or of the sorted weight files of a checkpoint folder."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    return folder_sha256(path, (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json"))
