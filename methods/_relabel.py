"""The SalUn stage-B loop, shared by RL (no mask) and SalUn (masked) (methods.md §6, §7.3)."""

from __future__ import annotations

import torch

from methods._masks import apply_mask, clip_norm_


def relabel_forget_loss(d, net, x_f, c_f, cover: int, p_drop: float, t=None, noise=None):
    """``mean over all B*C*H*W elements of (stopgrad(eps(net; x_t, t, c')) - eps(net; x_t, t, c_f))^2``
    with ``x_t = q(x_f, t, noise)`` and the fixed cover class ``c'``; the target is a separate,
    gradient-free forward pass (its own label-dropout draw)."""
    if t is None:
        t = d.antithetic_t(len(x_f))
    if noise is None:
        noise = torch.randn_like(x_f)
    x_t = d.q_sample(x_f, t, noise)
    out = d.eps(net, x_t, t, c_f, p_drop=p_drop)
    with torch.no_grad():
        target = d.eps(net, x_t, t, torch.full_like(c_f, cover), p_drop=p_drop)
    return (target - out).pow(2).mean()


def relabel_loop(ctx, net, cfg, mask=None):
    """Forget images noised and labelled c_f are regressed (element-MEAN) onto the model's own
    stop-gradient prediction for the fixed next class c'; plus alpha * L_simple on D_r.
    Order: clip the global norm, THEN mask, then Adam."""
    d = ctx.diffusion
    opt = ctx.optimizer(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    forget, remain = ctx.forget_batches(cfg.batch), ctx.remain_batches(cfg.batch)
    for _ in ctx.steps(cfg.iters):
        xr, yr = next(remain)
        loss_r = d.simple_loss(net, xr, yr, p_drop=cfg.p_drop)
        xf, yf = next(forget)
        loss_f = relabel_forget_loss(d, net, xf, yf, ctx.cover_class, cfg.p_drop)
        loss = loss_f + cfg.alpha * loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_norm_(net.parameters(), cfg.clip)
        if mask is not None:
            apply_mask(net, mask)
        opt.step()
        ctx.log(loss_f=loss_f, loss_r=loss_r)
    return net
