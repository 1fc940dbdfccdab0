"""One pass of per-batch clipped gradients of the guided forget/remain loss, and SalUn's stage A
(methods.md §7.2; SFR-on's Fisher pass, §8.2, squares the same per-batch gradients).

``ops`` is the context (or any model family, e.g. :class:`bench.models.family.PixelOps`): it supplies the
encoder, timesteps, noising, guidance and the loss's per-sample reduction, so the pass is the same code on
class and concept tasks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from bench.models.generators import eval_mode
from methods._masks import clip_norm_, top_fraction


def guided_batch_grads(net: nn.Module, ops, x: Tensor, c: Tensor, w: float, batch: int, clip: float = 1.0,
                       generator: torch.Generator | None = None) -> Iterator[dict[str, Tensor]]:
    """ONE shuffled pass over ``(x, c)`` (last partial batch kept), in ``eval()`` mode: per batch, the
    gradient of ``mean_i reduce_i (eps_i - guided(net; x_t, t, c_i, w)_i)^2`` (``reduce``: the task's
    per-sample reduction, a sum over pixels or a mean over latent elements), norm-clipped to ``clip``
    (``clip <= 0``: not clipped) BEFORE anything accumulates it. Yields ``{name: grad}`` (valid until the
    next batch)."""
    params = dict(net.named_parameters())
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    with eval_mode(net):
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
            xb, cb = ops.encode(x[idx]), c[idx]
            t = ops.timesteps(len(xb), generator)
            noise = torch.randn(xb.shape, generator=generator).to(xb.device)
            e = ops.guided_eps(net, ops.q_sample(xb, t, noise), t, cb, w)
            loss = ops.per_sample((noise - e).pow(2)).mean()
            net.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                clip_norm_(params.values(), clip)
            yield {n: p.grad for n, p in params.items() if p.grad is not None}
    net.zero_grad(set_to_none=True)


def guided_forget_gradient(ctx, net, w: float, batch: int, clip: float = 1.0, limit: int = 0) -> dict[str, Tensor]:
    """Signed sum over one pass of D_f (its first ``limit`` images when ``limit > 0``) of the per-batch
    clipped guided gradients."""
    x, c = ctx.forget_data()
    if limit > 0:
        x, c = x[:limit], c[:limit]
    total = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for grads in guided_batch_grads(net, ctx, x, c, w, batch, clip):
        for n, g in grads.items():
            total[n] += g
    return total


def salun_mask(ctx, net, ratio: float, w: float, batch: int, clip: float = 1.0, limit: int = 0) -> dict[str, Tensor]:
    grads = guided_forget_gradient(ctx, net, w, batch, clip, limit)
    return top_fraction({n: g.abs() for n, g in grads.items()}, ratio)
