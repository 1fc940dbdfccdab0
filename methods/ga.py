"""GA: gradient ascent on the forget data (methods.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, merge_presets, per_task, register_method
from methods._masks import clip_norm_


@register_method("ga")
class GradientAscent(Method):
    """Maximise the task's denoising loss on D_f (class tasks: label dropout 0.1, so the unconditional branch
    is pushed too), optionally plus ``alpha`` times the loss on D_r; clip, then Adam. Pure GA (alpha = 0) is
    the class default; the remain loss is not even computed then, since it would add no gradient.

    Concept tasks (Reference ``gradient_ascent.py``, object defaults): lr 1e-5, batch 8, alpha 0.1, 1,200
    iterations (10 epochs), no clipping, no caption dropout; sd-digits: batch 16, alpha 0.5, 200 iterations."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-4
        batch: int = 128
        alpha: float = 0.0
        clip: float = 1.0  # 0: no clipping
        p_drop: float = 0.1
        forget_batch: str = "shuffled"  # "first": the SD reference's unshuffled next(iter(loader)) quirk

    paper = "gradient ascent baseline (Unlearn-Saliency DDPM, --method ga)"
    data_free = False
    status = "reference"
    expected_failures = {"keeps_quality": "pure GA (alpha = 0) forgets by destroying the model: every class's "
                                          "retained accuracy collapses"}
    task_kinds = frozenset({"class", "concept"})
    presets = merge_presets(
        {"fast": {"iters": 150}, "smoke": {"iters": 20}},
        {"concept": {"iters": 1200, "lr": 1e-5, "batch": 8, "alpha": 0.1, "clip": 0.0, "p_drop": 0.0},
         "concept:smoke": {"iters": 4}},
        per_task({"sd-digits": {"batch": 16, "alpha": 0.5}}),
        {"sd-digits:smoke": {"iters": 200}, "sd-digits:fast": {"iters": 200}},
    )

    def unlearn(self, ctx):
        cfg = self.config
        net = ctx.base_model()
        opt = ctx.optimizer(ctx.param_set(net, "full"), lr=cfg.lr)
        forget = ctx.forget_batches(cfg.batch, first=cfg.forget_batch == "first")
        remain = ctx.remain_batches(cfg.batch) if cfg.alpha else None
        for _ in ctx.steps(cfg.iters):
            xf, cf = next(forget)
            loss_f = -ctx.loss(net, xf, cf, p_drop=cfg.p_drop)
            loss = loss_f
            if remain is not None:
                xr, cr = next(remain)
                loss = loss + cfg.alpha * ctx.loss(net, xr, cr, p_drop=cfg.p_drop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                clip_norm_(net.parameters(), cfg.clip)
            opt.step()
            ctx.log(loss_f=loss_f)
        return ctx.sampler(net)
