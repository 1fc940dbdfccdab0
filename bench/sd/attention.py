"""Cross-attention probabilities of a text-to-image UNet, recorded with gradients (FMN's loss, MACE's
attention loss), and the token positions a concept occupies in a prompt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError


def cross_attentions(unet: nn.Module) -> list[nn.Module]:
    """Every cross-attention module (``attn2``) of a diffusers UNet, in module order."""
    return [m for name, m in unet.named_modules() if name.endswith("attn2") and hasattr(m, "to_k")]


@contextmanager
def recorded_cross_attention(unet: nn.Module) -> Iterator[list[Tensor]]:
    """While active, every UNet forward appends each cross-attention's post-softmax probabilities
    (B·heads, queries, tokens) to the yielded list, with their graph: softmax(q kᵀ · scale) from the layer's own
    ``to_q`` and ``to_k`` (diffusers' ``Attention.get_attention_scores``), recomputed beside the layer's
    processor so that any processor (SDPA included) keeps running the forward unchanged."""
    layers = cross_attentions(unet)
    if not layers:
        raise BenchError("this UNet has no cross-attention (attn2) layers to record")
    found: list[Tensor] = []

    def hook(attn, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if text is None:
            raise BenchError("a cross-attention layer was called without text conditioning")
        if getattr(attn, "norm_cross", None) is not None:
            text = attn.norm_encoder_hidden_states(text)
        q = attn.head_to_batch_dim(attn.to_q(hidden))
        k = attn.head_to_batch_dim(attn.to_k(text))
        found.append(attn.get_attention_scores(q, k, None))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def concept_positions(ids: Tensor, concept: list[int], end_id: int | None = None) -> Tensor:
    """Boolean (B, L) mask of the positions of ``ids`` (B, L) where the token sequence ``concept`` occurs
    contiguously, plus, with ``end_id``, every position holding that id (the end token and, where the
    tokenizer pads with it as SD v1.x's does, the padding)."""
    mask = torch.zeros_like(ids, dtype=torch.bool)
    n = len(concept)
    if n:
        want = torch.tensor(concept, dtype=ids.dtype, device=ids.device)
        for start in range(ids.shape[1] - n + 1):
            hit = (ids[:, start:start + n] == want).all(1)
            mask[hit, start:start + n] = True
    if end_id is not None:
        mask |= ids == end_id
    return mask
