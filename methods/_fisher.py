"""Diagonal-Fisher helpers: SFR-on's per-batch clipped guided-loss Fisher and its ratio mask
(methods.md §8.2), and Selective Amnesia's per-image Fisher of the original model (§9.3).

Both are computed inside a method's ``unlearn()`` on a network handed out by the context, so the
driver counts their forward/backward passes and their time as setup cost. ``ops`` is the context (or a
model family such as :class:`bench.models.family.PixelOps`): encoder, timesteps and losses are the task's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.models.generators import eval_mode
from methods._saliency import guided_batch_grads


def _params(net: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in net.named_parameters()}


def guided_fisher(net: nn.Module, ops, x: Tensor, y: Tensor, w: float = 2.0,
                  batch: int = 128, clip: float = 1.0, generator: torch.Generator | None = None
                  ) -> dict[str, Tensor]:
    """SFR-on's Fisher diagonal (``generate_fisher``): ONE shuffled pass over ``(x, y)`` in
    batches of ``batch`` (last partial batch kept), each image with its own label; per batch the
    gradient of ``mean_i sum_pix (eps_i - cfg(net; x_t, t, c, w)_i)^2`` is norm-clipped to ``clip``
    and ``F += grad^2 / n_batches``. Runs in ``eval()`` mode (feature dropout off)."""
    fisher = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    n_batches = (len(x) + batch - 1) // batch
    for grads in guided_batch_grads(net, ops, x, y, w, batch, clip, generator):
        for name, g in grads.items():
            fisher[name] += g.pow(2) / n_batches
    return fisher


def fisher_ratio_mask(fisher_f: dict[str, Tensor], fisher_r: dict[str, Tensor], gamma: float = 1.0,
                      eps: float = 1e-15) -> dict[str, Tensor]:
    """``mask = (F_f + eps) / (F_r + eps) >= gamma``, a boolean tensor per parameter
    (``generate_fisher_mask.py``); the fraction of ones is whatever the ratio yields."""
    return {n: ((fisher_f[n] + eps) / (fisher_r[n] + eps)) >= gamma for n in fisher_f}


def image_fisher(net: nn.Module, ops, x: Tensor, y: Tensor, timesteps: int = 1000,
                 p_drop: float = 0.1, chunk: int = 1000, generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
    """Selective Amnesia's diagonal Fisher (``save_fim``): for each image ``x_n`` (label ``c_n``)

        g_n = (T / K) * grad sum_{k=1..K} reduce (eps_k - eps(net; q(x_n, t_k, eps_k), t_k, c_n, p_drop))^2
        F  += g_n^2 / N

    with one fresh noise per timestep and the square taken AFTER summing over the timesteps.
    ``timesteps = K = T`` is the reference (every t in 0..T-1). ``K < T`` (harness scaling) uses
    the stratified timesteps ``t_k = floor((k + u) T / K)`` (``u ~ U[0,1)`` drawn once per image)
    and rescales the sum by ``T / K``, an unbiased estimate of the full-sum gradient. The
    timesteps are split into chunks of ``chunk`` images per forward pass, gradients accumulate
    over the chunks (the reference's ``--n_chunks``). ``eval()`` mode; label dropout ``p_drop``
    stays active as in the reference. ``reduce`` is the task's per-sample reduction (sum over pixels; SD:
    mean over latent elements); concept images are encoded once per image (one VAE posterior sample)."""
    params = _params(net)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    N = len(x)
    if N == 0:
        return fisher
    T = ops.T
    K = max(1, min(int(timesteps), T))
    scale = T / K
    with eval_mode(net):
        for i in range(N):
            if K == T:
                t_all = torch.arange(T)
            else:
                u = torch.rand((), generator=generator)
                t_all = ((torch.arange(K) + u) * (T / K)).floor().long().clamp_(0, T - 1)
            net.zero_grad(set_to_none=True)
            xi = ops.encode(x[i:i + 1])
            for s in range(0, K, chunk):
                t = t_all[s:s + chunk].to(xi.device)
                xb = xi.expand(len(t), *xi.shape[1:])
                cb = y[i:i + 1].expand(len(t), *y.shape[1:])
                noise = torch.randn(xb.shape, generator=generator).to(xi.device)
                loss = ops.per_sample_loss(net, xb, cb, p_drop=p_drop, t=t, noise=noise, generator=generator).sum()
                (loss * scale).backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.pow(2) / N
    net.zero_grad(set_to_none=True)
    return fisher


def ewc_penalty(net: nn.Module, fisher: dict[str, Tensor], anchor: dict[str, Tensor],
                mask: dict[str, Tensor] | None = None) -> Tensor:
    """``sum_params sum_elems F * (theta - theta*)^2`` (restricted to ``mask`` when given)."""
    total = None
    for name, p in net.named_parameters():
        if name not in fisher:
            continue
        term = fisher[name] * (p - anchor[name]).pow(2)
        if mask is not None:
            term = term * mask[name].to(term.dtype)
        total = term.sum() if total is None else total + term.sum()
    if total is None:
        return torch.zeros(())
    return total
