"""Checks of the folders a run will write, done before any work starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.core.errors import BenchError


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it; one clear error otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise BenchError(f"{what} {str(path)!r} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".bench-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BenchError(f"{what} {str(path)!r} cannot be written: {reason}") from None
    return path
