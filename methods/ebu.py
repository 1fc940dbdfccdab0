"""EBU: Efficient Bayesian-based Unlearning, a RECONSTRUCTION (methods.md §12, ``ebu-recon-v1``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.errors import BenchError
from bench.method import Method, register_method
from methods._directions import combine_direction, flat, grads_of, restore, select_top, set_grads
from methods._fisher import image_fisher
from methods._masks import clip_norm_
from methods._replay import EMA, budget_decay, evaluated_weights, fim_set, generate_replay, replay_batches

FIM_SEED_OFFSET = 3_000_017


@register_method("ebu")
class EBU(Method):
    """RECONSTRUCTION (ebu-recon-v1) of EBU from its abstract and reviews (OpenReview A2muypu61H; no text,
    equations or code are public): SA without the all-parameter EWC. Per iteration, in two backward passes,
    g_f of L_simple on Gaussian surrogate images labelled c_f and g_r on replay samples of the frozen
    original (shared antithetic t); M_f, M_r = global top-50% of |g_f|, |g_r|; forget-only weights follow
    g_f, remember-only weights g_r, shared weights the two-task min-norm (MGDA) point a g_f + (1-a) g_r,
    weights in neither mask no update (``update_unselected``); clip_norm 1, Adam, EMA as SA. Every rule is a
    reconstruction or harness choice: docs/methods.md ("ebu")."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 20_000
        lr: float = 1e-4
        batch: int = 128
        surrogate: str = "gaussian"  # gaussian | uniform
        replay: str = "generated"  # generated | real
        n_replay: int = 500  # per remaining class
        replay_weights: str = "ema"
        replay_minmax: bool = False
        rho_f: float = 0.5
        rho_r: float = 0.5
        mask_every: int = 1
        balance: str = "mgda"  # mgda | pcgrad
        update_unselected: str = "frozen"  # frozen | none | remain
        ewc_lambda: float = 0.0
        fim_images: int = 500
        fim_timesteps: int = 1000
        fim_p_drop: float = 0.1
        fim_chunk: int = 50
        clip: float = 1.0
        p_drop: float = 0.0
        ema_decay: float = 0.9999
        ema_ref_iters: int = 20_000  # the budget ema_decay was set for; scaled to ``iters`` (0: no scaling)
        weights: str = "task"  # task | raw | ema

    paper = ("RECONSTRUCTION ebu-recon-v1 of EBU (Efficient Bayesian-based Unlearning), ICLR 2025 "
             "submission OpenReview A2muypu61H (withdrawn; abstract and reviews only)")
    data_free = True
    status = "reconstruction"
    version = "ebu-recon-v1"
    presets = {
        "fast": {"iters": 150, "lr": 1e-3, "n_replay": 50, "fim_images": 10, "fim_timesteps": 50},
        "smoke": {"iters": 30, "lr": 1e-3, "n_replay": 20, "fim_images": 4, "fim_timesteps": 20},
    }

    def unlearn(self, ctx):
        cfg, d = self.config, ctx.diffusion
        weights = evaluated_weights(ctx, cfg.weights)
        if cfg.surrogate not in ("gaussian", "uniform"):
            raise BenchError(f"ebu.surrogate must be 'gaussian' or 'uniform', not {cfg.surrogate!r}")
        if cfg.mask_every < 1:
            raise BenchError("ebu.mask_every must be >= 1")
        # --- setup: replay set (and the SA Fisher when EWC is on) ---
        if cfg.replay == "generated":
            rx, ry = generate_replay(ctx, ctx.remain_classes, cfg.n_replay, cfg.replay_weights,
                                     cfg.replay_minmax)
            replay = replay_batches(rx, ry, cfg.batch, ctx.seed * 7919 + 17)
        elif cfg.replay == "real":
            replay = ctx.remain_batches(cfg.batch)
        else:
            raise BenchError(f"ebu.replay must be 'generated' or 'real', not {cfg.replay!r}")
        net = ctx.base_model("raw")
        names, params = zip(*net.named_parameters())
        fisher = anchor = None
        if cfg.ewc_lambda > 0:
            if cfg.replay != "generated":
                rx, ry = generate_replay(ctx, ctx.remain_classes, cfg.fim_images, cfg.replay_weights)
            fx, fy = fim_set(ctx, rx, ry, ry, min(cfg.fim_images, len(rx)), "all", cfg.replay_weights)
            gen = torch.Generator().manual_seed(ctx.seed + FIM_SEED_OFFSET)
            fisher = flat(image_fisher(net, ctx, fx, fy, cfg.fim_timesteps, cfg.fim_p_drop, cfg.fim_chunk,
                                       gen).values())
            anchor = flat(p.detach() for p in params).clone()
        # --- the loop ---
        net.train()
        opt = ctx.optimizer(params, lr=cfg.lr, betas=(0.9, 0.999))
        ema = None
        if weights == "ema":  # the EMA only exists when it is what gets evaluated
            decay = budget_decay(cfg.ema_decay, cfg.iters, cfg.ema_ref_iters)
            ctx.record(ema_decay_effective=decay)
            ema = EMA(ctx, decay)
        probe = (lambda: ctx.sampler(ema.net, weights="ema")) if ema is not None else None
        m_f = m_r = None
        frozen = cfg.update_unselected == "frozen"
        for step in ctx.steps(cfg.iters, probe=probe):
            x_r, c_r = next(replay)
            b = len(x_r)
            if cfg.surrogate == "gaussian":
                x_f = torch.randn((b, *ctx.image_shape), device=ctx.device)
            else:
                x_f = torch.rand((b, *ctx.image_shape), device=ctx.device) * 2 - 1
            c_f = ctx.labels(ctx.forget_class, b)
            t = d.antithetic_t(b)
            loss_f = d.simple_loss(net, x_f, c_f, p_drop=cfg.p_drop, t=t)
            g_f = flat(grads_of(loss_f, params))
            loss_r = d.simple_loss(net, x_r, c_r, p_drop=cfg.p_drop, t=t)
            g_r = flat(grads_of(loss_r, params))
            if step % cfg.mask_every == 0 or m_f is None:
                m_f, m_r = select_top(g_f.abs(), cfg.rho_f), select_top(g_r.abs(), cfg.rho_r)
            direction, a = combine_direction(g_f, g_r, m_f, m_r, cfg.balance, cfg.update_unselected)
            theta = flat(p.detach() for p in params) if fisher is not None or frozen else None
            if fisher is not None:
                direction = direction + torch.where(m_r, 2 * cfg.ewc_lambda * fisher * (theta - anchor), 0.0)
            set_grads(params, direction)
            clip_norm_(params, cfg.clip)
            opt.step()
            if frozen:
                restore(params, ~(m_f | m_r), theta)
            if ema is not None:
                ema.update(net)
            ctx.log(loss_f=loss_f, loss_r=loss_r, a=a, shared_fraction=(m_f & m_r).sum() / m_f.numel())
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            return ctx.sampler(ema.net, weights="ema")
        return ctx.sampler(net, weights="raw")
