"""One pass of per-batch clipped gradients of the guided forget/remain loss, and SalUn's stage A
(methods.md §7.2; SFR-on's Fisher pass, §8.2, squares the same per-batch gradients)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from bench.diffusion import Diffusion
from bench.generators import eval_mode
from methods._masks import clip_norm_, top_fraction


def guided_batch_grads(net: nn.Module, diffusion: Diffusion, x: Tensor, y: Tensor, w: float, batch: int,
                       clip: float = 1.0, generator: torch.Generator | None = None
                       ) -> Iterator[dict[str, Tensor]]:
    """ONE shuffled pass over ``(x, y)`` (last partial batch kept), in ``eval()`` mode: per batch,
    the gradient of ``mean_i sum_pix (eps_i - cfg(net; x_t, t, c_i, w)_i)^2`` norm-clipped to
    ``clip`` BEFORE anything accumulates it. Yields ``{name: grad}`` (valid until the next batch)."""
    params = dict(net.named_parameters())
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    with eval_mode(net):
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
            xb, yb = x[idx], y[idx]
            t = diffusion.antithetic_t(len(xb), generator)
            noise = torch.randn(xb.shape, generator=generator).to(xb.device)
            e = diffusion.cfg_eps(net, diffusion.q_sample(xb, t, noise), t, yb, w)
            loss = (noise - e).pow(2).flatten(1).sum(1).mean()
            net.zero_grad(set_to_none=True)
            loss.backward()
            clip_norm_(params.values(), clip)
            yield {n: p.grad for n, p in params.items() if p.grad is not None}
    net.zero_grad(set_to_none=True)


def guided_forget_gradient(ctx, net, w: float, batch: int, clip: float = 1.0) -> dict[str, Tensor]:
    """Signed sum over one pass of D_f of the per-batch clipped guided gradients."""
    x, y = ctx.forget_data()
    total = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for grads in guided_batch_grads(net, ctx.diffusion, x, y, w, batch, clip):
        for n, g in grads.items():
            total[n] += g
    return total


def salun_mask(ctx, net, ratio: float, w: float, batch: int) -> dict[str, Tensor]:
    grads = guided_forget_gradient(ctx, net, w, batch)
    return top_fraction({n: g.abs() for n, g in grads.items()}, ratio)
