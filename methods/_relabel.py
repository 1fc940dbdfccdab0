"""The SalUn stage-B loop, shared by RL (no mask) and SalUn (masked) (methods.md §6, §7.3)."""

from __future__ import annotations

import torch

from methods._masks import apply_mask, clip_norm_


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
        t = d.antithetic_t(len(xf))
        x_t = d.q_sample(xf, t, torch.randn_like(xf))
        out = d.eps(net, x_t, t, yf, p_drop=cfg.p_drop)
        with torch.no_grad():  # a separate pass: independent label-drop and dropout draws
            target = d.eps(net, x_t, t, torch.full_like(yf, ctx.cover_class), p_drop=cfg.p_drop)
        loss_f = (target - out).pow(2).mean()
        loss = loss_f + cfg.alpha * loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_norm_(net.parameters(), cfg.clip)
        if mask is not None:
            apply_mask(net, mask)
        opt.step()
        ctx.log(loss_f=loss_f, loss_r=loss_r)
    return net
