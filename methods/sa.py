"""Selective Amnesia (Heng & Soh, NeurIPS 2023; methods.md §9) for class-conditional DDPMs and text-to-image
models: one loss, L = L(surrogate | forget condition) + γ L(replay) + λ Σ F (θ − θ*)²."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.errors import BenchError
from bench.method import Method, merge_presets, per_task, register_method
from methods._fisher import ewc_penalty, image_fisher
from methods._masks import clip_norm_
from methods._replay import EMA, Surrogate, budget_decay, evaluated_weights, fim_set, generate_replay, replay_batches

FIM_SEED_OFFSET = 3_000_017


@register_method("sa")
class SelectiveAmnesia(Method):
    """Selective Amnesia (reference: clear-nus/selective-amnesia, ``ddpm`` and ``sd``):

    1. replay set: images of the remaining classes from the frozen original (``replay="generated"``, class
       tasks, data-free) or D_r with its captions (``replay="remain"``, the concept default);
    2. diagonal Fisher F of the original on ``fim_images`` replay images per class (and per remaining
       caption): per image, the gradient of the loss summed over ``fim_timesteps`` stratified timesteps
       (scaled by T/K), squared; θ* = the original weights;
    3. ``iters`` steps of L = L(x_s | forget condition) + γ L(replay) + λ Σ F (θ − θ*)², the two losses at
       shared timesteps; x_s is uniform noise (``surrogate="noise"``, the DDPM reference) or surrogate images
       (``"images"``: the cover class's, or the base model's images of the surrogate prompt, the SD
       reference) under SA's forget words; clip, then Adam (AdamW with weight decay on concept tasks).

    The evaluated weights follow the task (``weights="task"``); ``ema`` keeps an EMA from the pretrained EMA
    with its decay scaled to the budget (``ema_ref_iters``). Budgets, λ and the reasons behind them:
    docs/methods.md ("Selective Amnesia")."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 20_000
        lr: float = 1e-4
        batch: int = 128
        gamma: float = 1.0
        lam: float = 10.0
        clip: float = 1.0  # 0: no clipping
        p_drop: float = 0.0
        optimizer: str = "adam"  # adam | adamw
        weight_decay: float = 0.0
        params: str = "full"  # full | auto (nudity: noxattn) | xattn | noxattn
        surrogate: str = "noise"  # noise | images
        replay: str = "generated"  # generated (from the frozen original) | remain (D_r with its captions)
        ema_decay: float = 0.9999
        ema_ref_iters: int = 20_000  # the budget ema_decay was set for; scaled to ``iters`` (0: no scaling)
        weights: str = "task"  # task | raw | ema
        n_replay: int = 500  # per remaining class (replay="generated")
        replay_weights: str = "ema"
        replay_minmax: bool = False
        fim_images: int = 500  # per class
        fim_timesteps: int = 1000
        fim_classes: str = "all"  # all | remain
        fim_p_drop: float = 0.1
        fim_chunk: int = 50  # timesteps per forward (reference --n_chunks 20 -> 50 of 1000)
        fim_unscaled: bool = False

    paper = ("Heng & Soh, Selective Amnesia: A Continual Learning Approach to Forgetting in Deep "
             "Generative Models, NeurIPS 2023, arXiv 2305.10120")
    data_free = True
    status = "reference"
    task_kinds = frozenset({"class", "concept"})
    presets = merge_presets(
        {"fast": {"iters": 150, "lr": 1e-3, "lam": 0.03, "n_replay": 50, "fim_images": 10, "fim_timesteps": 50},
         "smoke": {"iters": 30, "lr": 1e-3, "lam": 0.03, "n_replay": 20, "fim_images": 4, "fim_timesteps": 20}},
        {"concept": {"iters": 1000, "lr": 1.6e-4, "batch": 16, "lam": 50.0, "clip": 0.0, "optimizer": "adamw",
                     "weight_decay": 0.01, "params": "auto", "surrogate": "images", "replay": "remain",
                     "fim_images": 25, "fim_timesteps": 20, "fim_classes": "remain", "fim_p_drop": 0.0,
                     "fim_chunk": 1000},
         "concept:smoke": {"iters": 4}},
        per_task({"sd-nudity": {"fim_images": 200}, "sd-digits": {"lr": 1e-3, "lam": 1.0}}),
        {"sd-digits:smoke": {"iters": 100, "fim_images": 1, "fim_timesteps": 4},
         "sd-digits:fast": {"iters": 200, "fim_images": 6, "fim_timesteps": 10}},
    )

    def unlearn(self, ctx):
        cfg = self.config
        weights = evaluated_weights(ctx, cfg.weights)
        # --- stage A: the replay set ---
        if cfg.replay == "generated":
            rx, rc = generate_replay(ctx, ctx.remain_classes, cfg.n_replay, cfg.replay_weights, cfg.replay_minmax)
            groups = rc
        elif cfg.replay == "remain":
            rx, rc = ctx.remain_data()
            groups = ctx.remain_groups()
        else:
            raise BenchError(f"sa.replay must be 'generated' or 'remain', not {cfg.replay!r}")
        # --- stage B: diagonal Fisher of the original (raw) weights ---
        net = ctx.base_model("raw")
        params = ctx.param_set(net, cfg.params, auto="sa")
        fx, fc = fim_set(ctx, rx, rc, groups, min(cfg.fim_images, cfg.n_replay), cfg.fim_classes, cfg.replay_weights)
        if cfg.fim_unscaled:
            fx = (fx + 1) / 2
        gen = torch.Generator().manual_seed(ctx.seed + FIM_SEED_OFFSET)
        fisher = image_fisher(net, ctx, fx, fc, cfg.fim_timesteps, cfg.fim_p_drop, cfg.fim_chunk, gen)
        trained = {id(p) for p in params}
        fisher = {n: f for (n, p), f in zip(net.named_parameters(), fisher.values()) if id(p) in trained}
        anchor = {n: p.detach().clone() for n, p in net.named_parameters() if n in fisher}
        n_el = sum(f.numel() for f in fisher.values())
        fisher_mean = float(sum(f.sum() for f in fisher.values())) / n_el
        ctx.log(fisher_mean=fisher_mean, n_replay=len(rx), n_fim=len(fx))
        # --- stage C: forgetting ---
        net.train()
        opt = ctx.optimizer(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                            kind=cfg.optimizer)
        ema = None
        if weights == "ema":  # the EMA only exists when it is what gets evaluated
            decay = budget_decay(cfg.ema_decay, cfg.iters, cfg.ema_ref_iters)
            ctx.record(ema_decay_effective=decay)
            ema = EMA(ctx, decay)
        replay = replay_batches(rx, rc, cfg.batch, ctx.seed * 7919 + 17)
        surrogate = Surrogate(ctx, cfg.surrogate)
        probe = (lambda: ctx.sampler(ema.net, weights="ema")) if ema is not None else None
        for _ in ctx.steps(cfg.iters, probe=probe):
            x_r, c_r = next(replay)
            x_r, c_r = ctx.encode(x_r), c_r.to(ctx.device)
            b = len(x_r)
            x_f, c_f = surrogate.batch(b)
            t = ctx.timesteps(b)
            loss_f = ctx.loss(net, x_f, c_f, p_drop=cfg.p_drop, t=t)
            loss_r = ctx.loss(net, x_r, c_r, p_drop=cfg.p_drop, t=t)
            loss_ewc = ewc_penalty(net, fisher, anchor)
            loss = loss_f + cfg.gamma * loss_r + cfg.lam * loss_ewc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                clip_norm_(net.parameters(), cfg.clip)
            opt.step()
            if ema is not None:
                ema.update(net)
            ctx.log(loss_f=loss_f, loss_r=loss_r, loss_ewc=loss_ewc)
        if ema is not None:
            return ctx.sampler(ema.net, weights="ema")
        return ctx.sampler(net, weights=weights)
