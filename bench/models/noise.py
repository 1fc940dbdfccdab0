"""Counter-based Gaussian noise drawn on the device.

The sampler needs noise for image ``i`` of class ``c`` that depends only on ``(seed, c, i)`` and on
which draw it is (the initial ``x_T`` is draw 0, the ancestral noise of the k-th step is draw k), never
on the batch size or on the other images in the batch (protocol.md §3.5). A per-image
``torch.Generator`` gives that, but costs one host ``randn`` per image per step and a host-to-device
copy. Here every value is a pure function of ``(key, draw, element)``: a 32-bit integer hash of the
counter, evaluated with tensor ops wherever the images live, turned into N(0, 1) by Box-Muller. The
same key gives the same noise on a CPU and on a GPU.

The hash is the "lowbias32" integer finaliser (xor-shift / multiply rounds, constants 0x7feb352d and
0x846ca68b), chained over the counter words; uniforms keep the top 24 bits, so |z| <= 5.8. The arithmetic is float32
(24-bit integers are exact in it), so it runs at full rate on every GPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B


def _hash32(x: Tensor) -> Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2**32); int64 products wrap, so the low 32
    bits are exact."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK
    return x ^ (x >> 16)


def _mix(h: Tensor, word: Tensor | int) -> Tensor:
    return _hash32((h ^ word) & _MASK)


def image_keys(seed: int, labels: Tensor, index: Tensor) -> Tensor:
    """One 32-bit key per image from ``(seed, class, per-class index)``, as int64 on the labels' device."""
    h = torch.full_like(labels, int(_hash32(torch.tensor(seed & _MASK)).item()), dtype=torch.int64)
    h = _mix(h, (seed >> 32) & _MASK)
    h = _mix(h, labels.long() & _MASK)
    return _mix(h, index.long().to(labels.device) & _MASK)


def counter_normal(keys: Tensor, draw: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """``(len(keys), *shape)`` standard normal values; entry ``[b, j]`` depends only on
    ``(keys[b], draw, j)``."""
    n = math.prod(shape)
    half = (n + 1) // 2
    j = torch.arange(half, device=keys.device, dtype=torch.int64)
    base = _mix(keys.view(-1, 1), draw & _MASK)
    h1 = _mix(_mix(base, j), 0x5BD1E995)
    h2 = _mix(_mix(base, j), 0x1B873593)
    u1 = ((h1 >> 8).to(torch.float32) + 0.5) / 16777216.0
    u2 = (h2 >> 8).to(torch.float32) / 16777216.0
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = 2.0 * math.pi * u2
    z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :n]
    return z.to(dtype).view(len(keys), *shape)


class CounterNoise:
    """A :data:`bench.models.diffusion.NoiseFn`: each call returns the next draw for every image."""

    def __init__(self, seed: int, labels: Tensor, index: Tensor, shape: tuple[int, ...],
                 device: torch.device | str) -> None:
        self.keys = image_keys(seed, labels.to(device), index.to(device))
        self.shape = tuple(shape)
        self.draw = 0

    def __call__(self, _: tuple[int, ...] = ()) -> Tensor:
        z = counter_normal(self.keys, self.draw, self.shape)
        self.draw += 1
        return z
