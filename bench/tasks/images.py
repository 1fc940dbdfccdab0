"""Tasks on real image datasets (Fashion-MNIST, CIFAR-10, STL-10), read offline by :mod:`bench.datasets`.

The data a task trains and evaluates on are found at run time (``--data-root``, the harness cache,
well-known local paths), so a task is *bound* to its data before any cell is planned: the bound copy
carries the data variant (``cifar10-official``, ``cifar10-jpeg75``, ...) and the SHA-256 of the images,
both part of every cell's identity and row, so results on different variants never share a table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.core.cache import default_cache_root
from bench.datasets import resize_images, resolve_dataset
from bench.tasks import Splits, Task


@dataclass
class ImageTask(Task):
    dataset: str = ""  # name understood by bench.datasets.resolve_dataset
    resize: int | None = None  # resize (PIL bilinear) to this size, e.g. STL-10 96 -> 64 px
    combine_split: tuple[int, int] | None = None  # (train, test) sizes of a seeded re-split of train+test
    split_seed: int = 1234
    data_info: dict = field(default_factory=dict)
    _images: object = field(default=None, repr=False, compare=False)

    def bind(self, data_root: Path | None, cache_root: Path | None) -> ImageTask:
        """A copy of the task holding its resolved data; ``dataset_variant`` and ``data_info`` are set."""
        images = resolve_dataset(self.dataset, Path(data_root) if data_root else None,
                                 Path(cache_root) if cache_root else default_cache_root())
        bound = dataclasses.replace(self)
        bound._images = images
        bound.dataset_variant = images.variant
        bound.data_info = {"data_source": images.source, "dataset_variant": images.variant,
                           "data_sha256": images.sha256, **{f"data_{k}": v for k, v in images.details.items()}}
        return bound

    @property
    def bound(self) -> bool:
        return self._images is not None

    def load_splits(self, data_root: Path | None = None, cache_root: Path | None = None) -> Splits:
        task = self if self.bound else self.bind(data_root, cache_root)
        im = task._images
        tx, ty, vx, vy = im.train_x, im.train_y, im.test_x, im.test_y
        if self.resize and tx.shape[-1] != self.resize:
            tx, vx = resize_images(tx, self.resize), resize_images(vx, self.resize)
        if self.combine_split is not None:
            x, y = np.concatenate([tx, vx]), np.concatenate([ty, vy])
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed)).numpy()
            n_train, n_test = self.combine_split
            if len(x) < n_train + n_test:  # a smaller copy (test fixtures): keep the same proportions
                n_train = round(len(x) * n_train / (n_train + self.combine_split[1]))
                n_test = len(x) - n_train
            tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_test])
            tx, ty, vx, vy = x[tr], y[tr], x[te], y[te]

        def model_space(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a, dtype=np.float32)).div_(127.5).sub_(1.0)

        return Splits(model_space(tx), torch.from_numpy(np.asarray(ty, dtype=np.int64)), model_space(vx),
                      torch.from_numpy(np.asarray(vy, dtype=np.int64)), dict(task.data_info))
