"""RL: relabel the forget class to the fixed next class, no saliency mask (methods.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from methods._relabel import relabel_loop


@register_method("rl")
class RandomLabel(Method):
    """The SalUn stage-B loop without the mask: forget images labelled c_f regress onto the model's
    own prediction for (c_f + 1) mod 10, element-mean loss, plus 1e-3 * L_simple on D_r."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-4
        batch: int = 128
        alpha: float = 1e-3
        clip: float = 1.0
        p_drop: float = 0.1

    paper = "random-label baseline (SalUn, arXiv 2310.12508; Unlearn-Saliency DDPM --method rl)"
    data_free = False
    status = "reference"
    presets = {"fast": {"iters": 150}, "smoke": {"iters": 20}}

    def unlearn(self, ctx):
        net = relabel_loop(ctx, ctx.base_model("raw"), self.config)
        return ctx.sampler(net, weights="raw")
