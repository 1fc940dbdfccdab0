"""Retrain: the gold standard, trained from scratch on D_r only (methods.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from bench.train import diffusion_step, make_ema


@register_method("retrain")
class Retrain(Method):
    """Same recipe as the task's base model (harness choice for small tasks: the scaled recipe, so
    that Original and Retrain are comparable anchors), on the remaining classes only. The forget
    class's embedding row is never updated and keeps its random initialisation. The reference
    iteration count (800k on CIFAR-10) is used only where the task's recipe says so."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 800_000

    paper = "retrain from scratch without the forget class (Unlearn-Saliency DDPM retrain)"
    data_free = False
    status = "baseline"
    reference_row = True

    @classmethod
    def task_defaults(cls, task, profile) -> dict:
        return {"iters": profile.pretrain.steps}

    def unlearn(self, ctx):
        recipe = ctx.profile.pretrain
        net = ctx.fresh_model()
        opt = ctx.optimizer(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, kind=recipe.optimizer)
        ema = make_ema(net, recipe)
        remain = ctx.remain_batches(recipe.batch)
        for _ in ctx.steps(self.config.iters):
            x, y = next(remain)
            ctx.log(loss=diffusion_step(net, opt, ctx.diffusion, x, y, recipe, ema))
        if ctx.task.weights_evaluated == "ema":
            ema.copy_to(net.parameters())
        return ctx.sampler(net.eval(), weights=ctx.task.weights_evaluated)
