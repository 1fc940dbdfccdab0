"""Infinite, seeded, shuffled batch streams (the reference's cycled loaders, last partial batch kept)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def batch_stream(x: Tensor, y: Tensor, batch_size: int, seed: int,
                 device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
    """Cycle forever over shuffled epochs of ``(x, y)``; a fresh permutation every epoch."""
    if len(x) == 0:
        raise ValueError("cannot stream batches from an empty set")
    g = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    while True:
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for s in range(0, len(x), batch_size):
            idx = perm[s:s + batch_size]
            yield x[idx], y[idx]
