"""Original: the pretrained base model, no unlearning (reference row; methods.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method


@register_method("original")
class Original(Method):
    """The quality anchor (best FID) and no-forgetting anchor (lowest UA), sampled like every method."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 0

    paper = "pretrained class-conditional DDPM (protocol.md §1.3), no unlearning"
    data_free = True
    status = "baseline"
    reference_row = True
    steps_per_iter = 0

    task_kinds = frozenset({"class", "concept"})

    def unlearn(self, ctx):
        net = ctx.base_model(ctx.weights_evaluated, trainable=False)
        return ctx.sampler(net, weights=ctx.weights_evaluated)
