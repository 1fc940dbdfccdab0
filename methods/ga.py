"""GA: gradient ascent on the forget data (methods.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from methods._masks import clip_norm_


@register_method("ga")
class GradientAscent(Method):
    """Maximise L_simple on D_f (label dropout 0.1, so the unconditional branch is pushed too),
    optionally plus alpha * L_simple on D_r; clip_norm 1.0; Adam. Pure GA (alpha = 0) is the
    harness default; the remain loss is not even computed then, since it would add no gradient."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-4
        batch: int = 128
        alpha: float = 0.0
        clip: float = 1.0
        p_drop: float = 0.1

    paper = "gradient ascent baseline (Unlearn-Saliency DDPM, --method ga)"
    data_free = False
    status = "reference"
    expected_failures = {"keeps_quality": "pure GA (alpha = 0) forgets by destroying the model: every class's "
                                          "retained accuracy collapses"}
    presets = {"fast": {"iters": 150}, "smoke": {"iters": 20}}

    def unlearn(self, ctx):
        cfg, d = self.config, ctx.diffusion
        net = ctx.base_model("raw")
        opt = ctx.optimizer(net.parameters(), lr=cfg.lr)
        forget = ctx.forget_batches(cfg.batch)
        remain = ctx.remain_batches(cfg.batch) if cfg.alpha else None
        for _ in ctx.steps(cfg.iters):
            xf, yf = next(forget)
            loss_f = -d.simple_loss(net, xf, yf, p_drop=cfg.p_drop)
            loss = loss_f
            if remain is not None:
                xr, yr = next(remain)
                loss = loss + cfg.alpha * d.simple_loss(net, xr, yr, p_drop=cfg.p_drop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_norm_(net.parameters(), cfg.clip)
            opt.step()
            ctx.log(loss_f=loss_f)
        return ctx.sampler(net, weights="raw")
