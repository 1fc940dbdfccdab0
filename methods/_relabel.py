"""The SalUn stage-B loop, shared by RL (no mask) and SalUn (masked) (methods.md §6, §7.3)."""

from __future__ import annotations

import torch

from methods._masks import apply_mask, clip_norm_


def relabel_forget_loss(ops, net, x_f, c_f, c_cover, p_drop: float, t=None, noise=None):
    """``mean over all elements of (stopgrad(eps(net; x_t, t, c')) - eps(net; x_t, t, c_f))^2`` with
    ``x_t = q(x_f, t, noise)`` and the cover condition ``c'`` (the next class, or the cover prompt); the
    target is a separate, gradient-free forward pass (its own dropout draw) on the same ``x_t``."""
    if t is None:
        t = ops.timesteps(len(x_f))
    if noise is None:
        noise = torch.randn_like(x_f)
    x_t = ops.q_sample(x_f, t, noise)
    out = ops.eps(net, x_t, t, c_f, p_drop=p_drop)
    with torch.no_grad():
        target = ops.eps(net, x_t, t, c_cover, p_drop=p_drop)
    return (target - out).pow(2).mean()


def relabel_loop(ctx, net, cfg, mask=None):
    """Forget images under the forget condition are regressed (element MEAN) onto the model's own
    stop-gradient prediction for the cover condition, plus ``alpha`` times the task's loss on D_r.
    Order: clip the global norm (``clip > 0``), THEN mask, then Adam."""
    opt = ctx.optimizer(ctx.param_set(net, "full"), lr=cfg.lr, betas=(0.9, 0.999))
    forget = ctx.forget_batches(cfg.batch, first=cfg.forget_batch == "first")
    remain = ctx.remain_batches(cfg.batch)
    for _ in ctx.steps(cfg.iters):
        xr, cr = next(remain)
        loss_r = ctx.loss(net, xr, cr, p_drop=cfg.p_drop)
        xf, cf = next(forget)
        loss_f = relabel_forget_loss(ctx, net, xf, cf, ctx.cond("cover", len(xf)), cfg.p_drop)
        loss = loss_f + cfg.alpha * loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            clip_norm_(net.parameters(), cfg.clip)
        if mask is not None:
            apply_mask(net, mask)
        opt.step()
        ctx.log(loss_f=loss_f, loss_r=loss_r)
    return net
