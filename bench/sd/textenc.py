"""Continuous prompt tokens for a text encoder: k free vectors in the token-embedding space placed after the
start token (AdvUnlearn's ``prefix_k`` attack and the embedding attacks built on it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def prefixed_ids(ids: Tensor, k: int, filler: int) -> Tensor:
    """``ids`` (B, L) with ``k`` placeholder tokens inserted after the start token; the last k positions drop
    off, so the length stays L."""
    if k <= 0:
        return ids
    fill = torch.full((ids.shape[0], k), filler, dtype=ids.dtype, device=ids.device)
    return torch.cat([ids[:, :1], fill, ids[:, 1:ids.shape[1] - k]], 1)


@contextmanager
def token_embeddings_replaced(encoder: nn.Module, start: int, values: Tensor) -> Iterator[None]:
    """While active, the encoder's token embeddings at positions ``start .. start + k − 1`` are ``values``
    (k, D), for every prompt of a batch; gradients reach ``values``."""
    table = encoder.get_input_embeddings()
    k = values.shape[0]

    def hook(_module, _args, out):
        free = values.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :start], free, out[:, start + k:]], 1)

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with_prefix(encoder: nn.Module, ids: Tensor, prefix: Tensor | None, filler: int) -> Tensor:
    """Last hidden state of ``encoder`` on ``ids`` (B, 77), with the (k, D) ``prefix`` after the start token."""
    if prefix is None or prefix.shape[0] == 0:
        return encoder(ids)[0].float()
    with token_embeddings_replaced(encoder, 1, prefix):
        return encoder(prefixed_ids(ids, prefix.shape[0], filler))[0].float()
