"""GA: gradient ascent on the forget data (methods.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from methods._masks import clip_norm_
from methods._sd import merge_presets, per_task


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
    task_kinds = frozenset({"class", "concept"})

    @dataclass(frozen=True)
    class ConceptConfig:
        """GA-SD (Reference ``gradient_ascent.py``, object defaults; other tasks: reconstruction). sd-digits:
        the reference lr, batch 16 + 16, α 0.5, 200 iterations."""

        iters: int = 1200  # 10 epochs in the reference
        lr: float = 1e-5
        batch: int = 8
        alpha: float = 0.1
        forget_batch: str = "shuffled"  # "first": the reference's unshuffled next(iter(loader)) quirk

    concept_presets = merge_presets(
        {"smoke": {"iters": 4}},
        per_task({"sd-digits": {"batch": 16, "alpha": 0.5}}),
        {"sd-digits:smoke": {"iters": 200}, "sd-digits:fast": {"iters": 200}},
    )

    def unlearn_concept(self, ctx):
        """L = −L_ldm(θ; D_f, e(c_f)) + α · L_ldm(θ; D_r, e(p_r)), element means, full UNet, Adam, no clipping."""
        cfg = self.config
        unet = ctx.unet()
        opt = ctx.optimizer(ctx.param_set(unet, "full"), lr=cfg.lr)
        forget = ctx.forget_batches(cfg.batch, first=cfg.forget_batch == "first")
        remain = ctx.remain_batches(cfg.batch)
        for _ in ctx.steps(cfg.iters):
            z_f, _pf, e_f = next(forget)
            z_r, _pr, e_r = next(remain)
            loss_f = ctx.ldm_loss(unet, z_f, e_f)
            loss_r = ctx.ldm_loss(unet, z_r, e_r)
            loss = -loss_f + cfg.alpha * loss_r
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ctx.log(loss_f=loss_f, loss_r=loss_r)
        return ctx.sampler(unet)

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
