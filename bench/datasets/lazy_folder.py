"""A class-per-folder image tree read lazily: ImageNet's ``train/<wnid>/*.JPEG`` holds 1.28 million files (about
140 GB), so only the file names are listed up front and images are decoded, resized and center-cropped batch
by batch when a method or the evaluation asks for them.

Labels are the class folders' sorted order, which for ImageNet's ``n01440764 ... n15075141`` is the standard
0..999 index (the one DiT, timm and torchvision use). Every image is brought to ``size x size`` the way DiT's
training data were prepared: halved with a box filter while its short side is at least twice ``size``, resized
bicubically so the short side is ``size``, then center-cropped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from bench.core.errors import BenchError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def center_crop(im: Image.Image, size: int) -> np.ndarray:
    """``(3, size, size)`` uint8: box-halve while the short side is >= 2 * size (cheap and alias-free), one
    bicubic resize to a short side of ``size``, then the central square."""
    im = im.convert("RGB")
    while min(im.size) >= 2 * size:
        im = im.reduce(2)
    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


class LazyImageFolder:
    """The file names of one split (``root/<class>/<image>``); :meth:`load` decodes the images it is asked for.

    ``decoded`` counts the images decoded so far (what the streaming test checks)."""

    def __init__(self, root: Path, classes: Sequence[str], files: Sequence[Sequence[str]], size: int,
                 threads: int | None = None) -> None:
        self.root, self.classes, self.size = Path(root), tuple(classes), int(size)
        self.files = [tuple(f) for f in files]
        self.counts = np.array([len(f) for f in self.files], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.decoded = 0
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: ThreadPoolExecutor | None = None

    @classmethod
    def scan(cls, root: Path, size: int, what: str) -> LazyImageFolder:
        """List ``root/<class>/*.{jpeg,jpg,png}``; one BenchError for a missing folder, no class folders or a
        class folder without images (``what`` names the folder in the message, e.g. "--data-root .../train")."""
        root = Path(root)
        if not root.is_dir():
            raise BenchError(f"{what}: no such folder {root}")
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise BenchError(f"{what}: {root} has no class sub-folders (expected {root}/<class>/<image>.JPEG)")
        files = []
        for c in classes:
            names = sorted(e.name for e in os.scandir(root / c)
                           if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith("."))
            if not names:
                raise BenchError(f"{what}: class folder {root / c} holds no .JPEG/.jpg/.png images")
            files.append(names)
        return cls(root, classes, files, size)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, index: np.ndarray) -> np.ndarray:
        """Class of each global index (images are numbered class by class, in file-name order)."""
        return np.searchsorted(self.offsets, np.asarray(index), side="right") - 1

    def indices(self, classes: Sequence[int], per_class: int | None = None) -> np.ndarray:
        """Global indices of the images of ``classes`` (the first ``per_class`` of each when given)."""
        parts = [np.arange(self.offsets[c], self.offsets[c] + min(self.counts[c], per_class or self.counts[c]))
                 for c in classes]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def path(self, index: int) -> Path:
        c = int(self.label_of(index))
        return self.root / self.classes[c] / self.files[c][int(index - self.offsets[c])]

    def listing_sha256(self) -> str:
        """SHA-256 of the listing (class folders and file names, in order): the data's identity. Reading every
        byte of ImageNet to hash it would take longer than most cells; a renamed, added or removed file
        changes it, an edited one does not."""
        h = hashlib.sha256()
        for c, names in zip(self.classes, self.files):
            h.update(c.encode() + b"/\0" + "\0".join(names).encode() + b"\n")
        return h.hexdigest()

    # --- decoding ----------------------------------------------------------------------------------
    def _decode(self, index: int) -> np.ndarray:
        p = self.path(index)
        try:
            with Image.open(p) as im:
                return center_crop(im, self.size)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BenchError(f"cannot decode image {p}: {exc}") from None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # PIL releases the GIL while it decodes and resizes
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        return self._pool

    def load(self, index: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``(uint8 (N, 3, size, size), int64 labels)`` of the given global indices, decoded now."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            return torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
        arrays = list(self._executor().map(self._decode, index.tolist()))
        self.decoded += len(index)
        return torch.from_numpy(np.stack(arrays)), torch.from_numpy(self.label_of(index))

    def batches(self, index: np.ndarray, batch: int, seed: int, first: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite batches over ``index``, a fresh seeded permutation every epoch (the last partial batch
        kept); ``first`` repeats the first ``batch`` indices. The next batch is decoded in the background while
        the caller works on the current one, and no more than those two batches are ever held."""
        if len(index) == 0:
            raise BenchError(f"{self.root}: no images to stream for these classes")
        g = torch.Generator().manual_seed(seed)

        def order() -> Iterator[np.ndarray]:
            if first:
                while True:
                    yield index[:batch]
            while True:
                perm = index[torch.randperm(len(index), generator=g).numpy()]
                for s in range(0, len(perm), batch):
                    yield perm[s:s + batch]

        if self._ahead is None:  # its own thread: a batch's load waits on the decoding pool
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        chunks = order()
        pending: Future = self._ahead.submit(self.load, next(chunks))
        while True:
            ready = pending.result()
            pending = self._ahead.submit(self.load, next(chunks))
            yield ready
