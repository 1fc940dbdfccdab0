"""Generative replay set from the frozen original model (Selective Amnesia §9.2, EBU §12.2), plus
the two small pieces SA and EBU share: the EMA shadow and the evaluated-weights rule.

The images are drawn with the task's evaluation sampler (``ctx.sampler``) over a frozen copy of
the pretrained model that the context hands out, so the driver counts the sampling forwards and
time as the method's setup cost. The noise seed is offset from the evaluation and probe seeds, so
the replay set never contains the images the evaluator will score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.datasets.streams import batch_stream
from bench.models.diffusion import from_uint8

REPLAY_SEED_OFFSET = 2_000_029  # distinct from the evaluation seed and the driver's probe offset


def stretch_minmax(u8: Tensor) -> Tensor:
    """The reference PNG export (``save_image(normalize=True)`` per image): stretch each image's
    min..max to 0..255, quantise with floor(255 v + 0.5). Constant images are left unchanged."""
    x = u8.float()
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(1e-5).view(-1, *([1] * (x.ndim - 1)))
    v = (x - lo.view_as(span)) / span
    out = torch.floor(255 * v + 0.5).clamp(0, 255).to(torch.uint8)
    const = (hi - lo) <= 0
    out[const] = u8[const]
    return out


def generate_replay(ctx, classes: list[int], per_class: int, weights: str = "ema", minmax: bool = False,
                    name: str = "original") -> tuple[Tensor, Tensor]:
    """``per_class`` images of each class in ``classes`` from the frozen pretrained model
    (``weights`` = ``raw`` or ``ema``), as ``(x in [-1, 1] on ctx.device, labels)``.

    Returns the pixels after the uint8 round trip (what a PNG replay folder would hold); with
    ``minmax`` each image is first min-max stretched like the reference export."""
    net = ctx.base_model(weights, name=name, trainable=False)
    labels = torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.long)
    if len(labels) == 0:
        return torch.empty((0, *ctx.image_shape), device=ctx.device), labels.to(ctx.device)
    u8 = ctx.sampler(net, weights=weights).sample(labels, seed=ctx.seed + REPLAY_SEED_OFFSET)
    if minmax:
        u8 = stretch_minmax(u8)
    return from_uint8(u8).to(ctx.device), labels.to(ctx.device)


def replay_batches(x: Tensor, y: Tensor, batch: int, seed: int):
    """Infinite shuffled batches of the replay set (cycled, last partial batch kept)."""
    return batch_stream(x, y, batch, seed, x.device)


def budget_decay(decay: float, iters: int, ref_iters: int) -> float:
    """The EMA decay for a run of ``iters`` iterations that leaves the starting shadow the same weight
    at the end as ``decay`` does over ``ref_iters`` (the budget it was set for):
    ``mu_eff ** iters == decay ** ref_iters``. ``ref_iters <= 0`` or ``iters <= 0`` keeps ``decay``.

    SA's 0.9999 over 20,000 iterations leaves the pretrained EMA e^-2 = 13.5% of the final shadow;
    kept at 0.9999 over 150 iterations it would leave 98.5%, and an EMA evaluation would show the
    original model."""
    if ref_iters <= 0 or iters <= 0:
        return decay
    return float(decay) ** (float(ref_iters) / float(iters))


class EMA:
    """``shadow <- mu * shadow + (1 - mu) * theta`` after each optimizer step. The shadow starts
    from the PRETRAINED EMA weights (methods.md §9.4: "EMA shadow <- pretrained EMA"), not from the
    raw weights the optimizer starts from."""

    def __init__(self, ctx, decay: float, name: str = "ema") -> None:
        self.decay = decay
        self.net = ctx.base_model("ema", name=name, trainable=False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        torch._foreach_lerp_(list(self.net.parameters()), [p.detach() for p in net.parameters()], 1.0 - self.decay)


def evaluated_weights(ctx, choice: str) -> str:
    """``task`` follows the task's rule (protocol.md §3.3, ``ctx.weights_evaluated``; a concept task has one
    set of weights, ``final``); else ``raw`` or ``ema`` (class tasks)."""
    w = ctx.weights_evaluated if choice == "task" else choice
    allowed = ("raw", "ema") if ctx.kind == "class" else ("final",)
    if w not in allowed:
        raise BenchError(f"weights must be 'task' or one of {', '.join(allowed)} on {ctx.kind} tasks, not {choice!r}")
    return w


def fim_set(ctx, replay_x: Tensor, replay_c: Tensor, groups: Tensor, per_class: int, classes: str, weights: str
            ) -> tuple[Tensor, Tensor]:
    """The images the Fisher is computed on: the first ``per_class`` replay images of every remaining
    class (``groups``: each replay image's class, or caption), plus (``classes="all"``, the reference's
    10-class FIM) ``per_class`` fresh samples of the forget class from the same frozen original."""
    xs, cs = [], []
    for g in torch.unique(groups).tolist():
        sel = (groups == g).nonzero().flatten()[:per_class]
        xs.append(replay_x[sel.to(replay_x.device)])
        cs.append(replay_c[sel.to(replay_c.device)])
    if classes == "all":
        xf, yf = generate_replay(ctx, [ctx.forget_class], per_class, weights, name="original_fim")
        xs.append(xf)
        cs.append(yf)
    elif classes != "remain":
        raise BenchError(f"fim_classes must be 'all' or 'remain', not {classes!r}")
    return torch.cat(xs), torch.cat(cs)


class Surrogate:
    """SA's stand-in for the forget condition's data: uniform noise in [-1, 1] pixels, or images drawn with
    replacement from ``ctx.surrogate_images()``; each under the forget condition (SA's forget words)."""

    def __init__(self, ctx, kind: str) -> None:
        if kind not in ("noise", "images"):
            raise BenchError(f"sa.surrogate must be 'noise' or 'images', not {kind!r}")
        self.ctx, self.kind = ctx, kind
        self.images = ctx.surrogate_images() if kind == "images" else None
        self.g = torch.Generator().manual_seed(ctx.seed * 31 + 7)

    def batch(self, b: int) -> tuple[Tensor, Tensor]:
        ctx = self.ctx
        if self.images is None:
            x = ctx.encode(torch.rand((b, *ctx.pixel_shape), device=ctx.device) * 2 - 1)
        else:
            idx = torch.randint(0, len(self.images), (b,), generator=self.g)
            x = ctx.encode(self.images[idx].to(ctx.device))
        return x, ctx.cond("sa_forget", b, generator=self.g)
