"""Claims and locks on shared folders, so that concurrent runs (two ``bench run``, a ``bench run``
and a sweep, the cells of a sweep on many machines) never compute the same cell or build the same
asset twice, and never interleave their table renders.

Both are advisory ``flock`` locks on small files that are never deleted (deleting a lock file that
another process has open would let two processes hold "the" lock on two different files). The
kernel drops a lock when its process dies, however it dies, so a claim left by a killed run
expires at once. On a cluster the results and cache folders must be on a shared file system whose
``flock`` is coherent across machines (NFSv4, Lustre, CephFS, BeeGFS with locking on); where
``fcntl`` is unavailable (Windows) claims are no-ops and concurrent runs are not protected.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class Claim:
    """An exclusive hold on one cell; release it (or let the process die) to hand it back."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def holder(path: Path) -> str:
    """Who holds (or last held) a claim, as recorded in its file: ``pid@host since HH:MM:SS``."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return "unknown"
    return f"pid {info.get('pid', '?')}@{info.get('host', '?')} since {info.get('since', '?')}"


def claim(path: Path, wait: bool = False) -> Claim | None:
    """Take the claim at ``path``; ``None`` if another live process holds it (unless ``wait``)."""
    fd = _open(Path(path))
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%H:%M:%S")}).encode())
    return Claim(Path(path), fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Block until no other process holds ``path``, and hold it for the ``with`` block."""
    c = claim(path, wait=True)
    try:
        yield
    finally:
        c.release()
