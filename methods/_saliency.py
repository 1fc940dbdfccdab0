"""SalUn's stage A: the saliency mask from the forget-class guided diffusion loss (methods.md §7.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.generators import eval_mode
from methods._masks import clip_norm_, top_fraction


def guided_forget_gradient(ctx, net, w: float, batch: int, clip: float = 1.0) -> dict[str, Tensor]:
    """Signed sum over ONE shuffled pass of D_f of per-batch norm-clipped gradients of
    ``mean_i sum_pix (eps_i - cfg(net; x_t, t, c_f, w))^2`` in eval() mode."""
    x, y = ctx.forget_data()
    perm = torch.randperm(len(x)).to(x.device)
    params = dict(net.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    d = ctx.diffusion
    with eval_mode(net):
        for s in range(0, len(x), batch):
            xb, yb = x[perm[s:s + batch]], y[perm[s:s + batch]]
            t = d.antithetic_t(len(xb))
            noise = torch.randn_like(xb)
            e = d.cfg_eps(net, d.q_sample(xb, t, noise), t, yb, w)
            loss = (noise - e).pow(2).flatten(1).sum(1).mean()
            net.zero_grad(set_to_none=True)
            loss.backward()
            clip_norm_(params.values(), clip)
            for n, p in params.items():
                if p.grad is not None:
                    total[n] += p.grad
    net.zero_grad(set_to_none=True)
    return total


def salun_mask(ctx, net, ratio: float, w: float, batch: int) -> dict[str, Tensor]:
    grads = guided_forget_gradient(ctx, net, w, batch)
    return top_fraction({n: g.abs() for n, g in grads.items()}, ratio)
