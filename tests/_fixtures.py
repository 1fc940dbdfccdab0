"""Small dataset copies written in the real on-disk formats (CIFAR-10 pickled batches, STL-10 column-major
binaries, Fashion-MNIST IDX files), with every class present and a class-dependent pattern in each image."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def class_images(n_per_class: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, size, size) images whose bright band position encodes the class, plus labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(y)
    x = rng.integers(0, 60, (len(y), channels, size, size)).astype(np.uint8)
    band = max(1, size // 10)
    for i, c in enumerate(y):
        x[i, :, c * band:(c + 1) * band, :] = 220
    return x, y.astype(np.int64)


def write_cifar_batches(root: Path, n_train_per_class: int = 20, n_test_per_class: int = 4, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/`` with ``data_batch_1..5`` and ``test_batch``."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    x, y = class_images(n_train_per_class, 3, 32, seed)
    parts = np.array_split(np.arange(len(y)), 5)
    for k, idx in enumerate(parts, 1):
        _pickle_batch(d / f"data_batch_{k}", x[idx], y[idx])
    tx, ty = class_images(n_test_per_class, 3, 32, seed + 1)
    _pickle_batch(d / "test_batch", tx, ty)
    return d


def _pickle_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    batch = {"batch_label": path.name, "labels": [int(v) for v in y], "data": x.reshape(len(x), -1),
             "filenames": [f"{i}.png" for i in range(len(x))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_stl_binary(root: Path, n_train_per_class: int = 10, n_test_per_class: int = 3, seed: int = 0) -> Path:
    """``root/stl10_binary/`` with the four labelled files (images column-major, labels 1..10)."""
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    for split, n, s in (("train", n_train_per_class, seed), ("test", n_test_per_class, seed + 1)):
        x, y = class_images(n, 3, 96, s)
        (d / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (d / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    return d


def write_fashion_idx(root: Path, n_train_per_class: int = 20, n_test_per_class: int = 4, seed: int = 0) -> Path:
    """Gzipped IDX files as Debian's dataset-fashion-mnist installs them."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train_per_class, seed), ("t10k", n_test_per_class, seed + 1)):
        x, y = class_images(n, 1, 28, s)
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", x[:, 0], 2051)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8), 2049)
    return root


def _idx(path: Path, arr: np.ndarray, magic: int) -> None:
    blob = struct.pack(">i", magic) + struct.pack(f">{arr.ndim}i", *arr.shape) + np.ascontiguousarray(arr).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(blob)
