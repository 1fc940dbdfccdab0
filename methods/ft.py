"""FT: fine-tune on the remaining data only (methods.md §4; a reconstruction, no DDPM reference)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from methods._masks import clip_norm_


@register_method("ft")
class FineTune(Method):
    """Continue training on D_r with L_simple (label dropout 0.1), Adam 1e-4, clip 1.0, no EMA.
    Expected to under-forget: it only relies on catastrophic forgetting of the forget class, which a
    few hundred steps on the other classes do not cause (measured on digits at fast, 150 iterations: UA 0.0),
    matching the SalUn project page's "under-forgetting" verdict; the conformance suite's forgetting
    check is marked as an expected failure for it (``expected_failures``)."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-4
        batch: int = 128
        clip: float = 1.0
        p_drop: float = 0.1

    paper = "fine-tuning baseline (SalUn, arXiv 2310.12508; DDPM recipe is a reconstruction)"
    data_free = False
    status = "reconstruction"
    expected_failures = {"forgets": "FT only trains on the remaining classes; a short run does not make the "
                                    "model forget (under-forgetting, SalUn project page)"}
    presets = {"fast": {"iters": 150}, "smoke": {"iters": 20}}  # SalUn's budgets (spec: same as SalUn)

    def unlearn(self, ctx):
        cfg, d = self.config, ctx.diffusion
        net = ctx.base_model("raw")
        opt = ctx.optimizer(net.parameters(), lr=cfg.lr)
        remain = ctx.remain_batches(cfg.batch)
        for _ in ctx.steps(cfg.iters):
            x, y = next(remain)
            loss = d.simple_loss(net, x, y, p_drop=cfg.p_drop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_norm_(net.parameters(), cfg.clip)
            opt.step()
            ctx.log(loss=loss)
        return ctx.sampler(net, weights="raw")
