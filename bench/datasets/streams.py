"""Infinite, seeded, shuffled batch streams (the reference's cycled loaders, last partial batch kept)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def batch_stream(x: Tensor, y: Tensor, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Cycle forever over shuffled epochs of ``(x, y)``; a fresh permutation every epoch.

    ``skip`` starts after that many batches without materialising them (a resumed run sees the batches
    the interrupted one would have seen next)."""
    if len(x) == 0:
        raise ValueError("cannot stream batches from an empty set")
    g = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    per_epoch = (len(x) + batch_size - 1) // batch_size
    for _ in range(skip // per_epoch):
        torch.randperm(len(x), generator=g)
    first = (skip % per_epoch) * batch_size
    while True:
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for s in range(first, len(x), batch_size):
            idx = perm[s:s + batch_size]
            yield x[idx], y[idx]
        first = 0
