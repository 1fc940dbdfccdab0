"""Retrain: the gold standard, trained from scratch on D_r only (methods.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method


@register_method("retrain")
class Retrain(Method):
    """The base model's recipe (optimizer, learning-rate schedule, batch, clipping, label dropout,
    EMA, length) on the remaining classes only, from the same initialisation and data-order seed as
    the base model of the cell's base seed. The forget class's embedding row is never updated and
    keeps its random initialisation.

    Harness choices: on small tasks the recipe is the task's scaled one, so Original and Retrain
    are comparable anchors; the reference length (800k iterations on CIFAR-10) is only used where
    the task's recipe says so. Retrain depends on (base seed, forget class, recipe) and not on the
    cell's unlearning seed, so it is trained once and cached like the base model; every row
    reports the wall time, optimizer steps and peak memory measured when it was trained, and the
    unlearning seed only changes the evaluation samples (as for Original). It has no probe curve:
    a model that never saw the forget class has no time to forget it.
    """

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
        weights = ctx.task.weights_evaluated
        net = ctx.retrained_model(self.config.iters, weights)
        return ctx.sampler(net.eval(), weights=weights)
