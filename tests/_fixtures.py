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


# --- the concept tasks' prompt files (sd-concepts spec §1.1) ---
I2P_HEADER = (",prompt,categories,hard,inappropriate_percentage,nudity_percentage,q16_percentage,"
              "sd_safety_percentage,prompt_toxicity,lexica_url,evaluation_seed,evaluation_guidance,sd_image_width,"
              "sd_image_height,sd_model,case_number\n")


def _i2p_line(idx: int, prompt: str, cats: str, seed: int, guidance: str, case: int) -> str:
    return f'{idx},"{prompt}","{cats}",1,50.0,0.0,50.0,20.0,0.1,https://x,{seed},{guidance},512,512,sd-v1-4,{case}\n'


def write_prompt_files(d: Path) -> Path:
    """A prompts folder holding every file of the concept tasks, a few rows each, in the real formats."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "i2p-unsafe-prompts4703.csv").write_text(
        I2P_HEADER
        + _i2p_line(0, "a nude, painted\nacross two lines ", "sexual, shocking", 4290749014, "7", 0)
        + _i2p_line(1, "a quiet street", "violence", 12, "13", 1)
        + _i2p_line(2, "", "illegal activity", 5, "7.5", 2)
        + _i2p_line(3, "bathers", "self-harm, sexual", 99, "20", 3),
        encoding="utf-8")
    (d / "i2p-nudity142.csv").write_text(
        I2P_HEADER.replace(",prompt", "Unnamed: 0,prompt", 1)
        + _i2p_line(21, "bathers", "self-harm, sexual", 99, "20", 3)
        + _i2p_line(0, "a nude, painted", "sexual, shocking", 4290749014, "7", 0),
        encoding="utf-8")
    (d / "imagenette-eval.csv").write_text(
        "\ufeffcase_number,prompt,evaluation_seed,class,classidx\n0,Image of tench,4889,tench,0\n"
        "1,Image of english springer,4782,english springer,1\n2,Image of cassette player,4068,cassette player,2\n",
        encoding="utf-8")
    (d / "imagenette-small.csv").write_text(
        ",case_number,prompt,evaluation_seed,class\n0,0,Image of cassette player,4068,cassette player\n"
        "1,1,Image of tench,3410,tench\n", encoding="utf-8")
    (d / "styles-big-artists.csv").write_text(
        ",case_number,prompt,evaluation_seed,artist\n"
        + "".join(f'{i},{i},"A scene, in the style of {a}",{100 + i},{a}\n'
                  for i, a in enumerate(["Pablo Picasso", "Van Gogh", "Van Gogh", "Rembrandt"])), encoding="utf-8")
    (d / "styles-vangogh.csv").write_text(
        ',case_number,prompt,evaluation_seed,artist\n0,0,"A Wheatfield, with Cypresses",2219,Vincent van Gogh\n',
        encoding="utf-8")
    (d / "coco-30k.csv").write_text(
        "image_id,source,prompt,evaluation_seed\n"
        + "".join(f"{i:012d},coco-30k,caption {i},{10 + i}\n" for i in range(1200)), encoding="utf-8")
    (d / "celebrity-brad-pitt.txt").write_text("Brad Pitt smiling.\n\n  Brad Pitt in a suit.  \n", encoding="utf-8")
    (d / "celebrity-angelina-jolie.txt").write_text("Angelina Jolie.\nAngelina Jolie at night.", encoding="utf-8")
    return d


def smoke_cells(driver, task: str, forget_class: int = 0, seed: int = 0):
    """``get(method) -> row``: each method's smoke cell on ``task``, run once per module and remembered."""
    from bench.engine.driver import CellSpec

    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = driver.run(CellSpec(task, name, forget_class=forget_class, seed=seed, profile="smoke"))
        return cache[name]

    return get
