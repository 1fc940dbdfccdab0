"""SPM: one-dimensional adapters that erase a concept (Lyu et al., "One-dimensional Adapter to Rule Them All:
Concepts, Diffusion Models and Erasing Applications", CVPR 2024; Con6924/SPM)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.core.errors import BenchError
from bench.method import Method, merge_presets, per_task, register_method
from bench.sd.adapters import attach, fixed_gate

ANCHOR_SETS = ("reference", "random")
TIMINGS = ("reference", "aligned")
SCHEDULES = ("cosine_restarts", "constant")


@register_method("spm")
class SPM(Method):
    """Data-free, like ESD, but only rank-1 adapters train (``bench/sd/adapters.py``: every Linear and 1×1
    Conv2d of the UNet's transformer blocks, U = 0 at the start, α = 1); the base UNet is frozen. Per
    iteration: k ~ U{1..S−1}; x = k steps of guided DDIM (s = ``s_start``) from noise with the adapted model;
    t = T−1 − ⌊kT/S⌋ (``timing="reference"``, the reference's scoring step, ~T/S above x's level; ``aligned``:
    x's own level); with the frozen base ε*:

        L = ‖ε_θ(x,t,c) − [ε*(x,t,∅) − η(ε*(x,t,c) − ε*(x,t,∅))]‖² + λ ‖ε_θ(x,t,a) − ε*(x,t,a)‖²

    over anchors a (Latent Anchoring): directions n ~ N(0,I) in the space of the prompt embedding E(c)
    (77×D), accepted with probability 1 − cos(n, E(c)), scaled to u‖E(c)‖, u ~ U(0.8, 1.2).
    ``anchor_set="reference"`` reproduces the released code's batch: it builds [∅, a_1, ∅, a_2, …] and its
    guidance-1 prediction keeps the second half, so with 4 anchors the loss sees ∅, a_3, ∅, a_4 (only that
    half is computed here); ``random`` uses ``anchors`` true anchors. AdamW (wd 0.01), the reference's
    cosine-with-hard-restarts schedule (warm-up 500, 3 cycles) or ``constant``.

    Facilitated Transport at inference: each sample's adapter output is multiplied by
    g = clamp(cos(flat E(p), flat E(c)), 0, 1)^``gate_power``, computed inside the UNet from the prompt
    embedding it receives. Deviations: the reference's gate is max(cos, share of the concept's tokens in the
    prompt); the UNet never sees token ids, so only the cosine term is implemented. The reference multiplies
    both adapter matrices by γ (effective γ², ``gate_power = 2``) and applies the prompt's γ to both CFG
    branches; here each branch is gated by its own embedding (∅ by cos(E(∅), E(c))). ``transport=False``:
    g = 1 everywhere. Plain AdamW, not bitsandbytes' AdamW8bit; fixed resolution (the task's), not the
    reference's random 256–448 px buckets."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 3000
        lr: float = 1e-4
        weight_decay: float = 0.01  # AdamW8bit's default
        rank: int = 1
        alpha: float = 1.0
        eta: float = 1.0  # the erase target's guidance (prompt.yaml guidance_scale)
        s_start: float = 3.0  # guidance ("s" form) of the partial DDIM that draws x
        ddim_steps: int = 30  # max_denoising_steps
        anchors: int = 4  # sampling_batch_size
        anchor_weight: float = 1000.0  # la_strength λ
        anchor_set: str = "reference"  # reference | random
        anchor_lo: float = 0.8
        anchor_hi: float = 1.2
        timing: str = "reference"  # reference | aligned
        schedule: str = "cosine_restarts"  # cosine_restarts | constant
        warmup: int = 500
        cycles: int = 3
        transport: bool = True  # Facilitated Transport at inference (False: gate 1 everywhere)
        gate_power: float = 2.0  # 2: the reference (both matrices scaled by γ); 1: the gate once

    paper = ("One-dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing Applications "
             "(Lyu et al., CVPR 2024; Con6924/SPM)")
    data_free = True
    status = "reference"
    task_kinds = frozenset({"concept"})
    # sd-digits (the task's 10 DDIM steps; 8,448 adapter weights; one cell ~20-30 s on 1 CPU thread), measured
    # on `smoke`, seed 0, 200 iterations, constant lr, UA / retained accuracy for "zero" (0) and "seven" (7):
    #   lr 1e-3, λ 1000: 0: 0.00 / 0.88 | lr 5e-3, λ 1000: 0: 0.06 / 0.74 (600 it.: 0.44 / 0.80)
    #   lr 1e-2, λ 1000: 0: 0.00 / 0.93 | lr 5e-3, λ 700: 0: 1.00 / 0.62, 7: 0.09 / 0.78
    #   lr 5e-3, λ 500: 0: 1.00 / 0.55 | λ 400: 0: 0.39 / 0.64, 7: 0.73 / 0.35 | λ 300 (chosen): 0: 1.00 / 0.49,
    #   7: 1.00 / 0.12 | λ 100: 0: 1.00 / 0.35 | 250 it., λ 0: 7: 1.00 / 0.16 | cosine restarts (warm-up 40):
    #   λ 1000: 0: 0.05 / 0.81, 7: 0.13 / 0.84; λ 500: 0: 0.94 / 0.61, 7: 0.11 / 0.58
    presets = merge_presets(
        per_task({"sd-digits": {"ddim_steps": 10, "schedule": "constant", "lr": 5e-3, "anchor_weight": 300.0}}),
        {"sd-digits:smoke": {"iters": 200}, "sd-digits:fast": {"iters": 200}},
    )
    expected_failures = {"keeps_quality": (
        "sd-digits: every caption's embedding has cosine 0.98-0.996 with the erased one's (shared 'a handwritten "
        "digit' and padding), so Facilitated Transport gates the other digits at ~1 and the rank-1 adapters "
        "either leave 'seven' alone or take the other digits along (smoke, seed 0, 200 iterations, lr 5e-3: "
        "anchor weight 300 -> 'zero' UA 1.00 / retained 0.49, 'seven' 1.00 / 0.12; 400 -> 'seven' 0.73 / 0.35; "
        "700 -> 'zero' 1.00 / 0.62 but 'seven' 0.09 / 0.78; the reference's 1000 -> 'zero' 0.06 / 0.74)")}

    def unlearn(self, ctx):
        cfg = self.config
        for field, value, choices in (("anchor_set", cfg.anchor_set, ANCHOR_SETS), ("timing", cfg.timing, TIMINGS),
                                      ("schedule", cfg.schedule, SCHEDULES)):
            if value not in choices:
                raise BenchError(f"spm.{field} must be one of {', '.join(choices)}, not {value!r}")
        if cfg.ddim_steps < 2:
            raise BenchError("spm.ddim_steps must be at least 2 (k is drawn from 1..S-1)")
        net = ctx.base_model()
        frozen = ctx.base_model(name="frozen", trainable=False)
        net.requires_grad_(False)
        c, c_null = ctx.cond("erase", 1), ctx.cond("null", 1)
        params = attach(net, c[0], rank=cfg.rank, alpha=cfg.alpha, transport=cfg.transport, power=cfg.gate_power)
        for p in params:
            p.requires_grad_(True)
        ctx.record(param_set=f"spm-rank{cfg.rank}", trainable_params=sum(p.numel() for p in params))
        opt = ctx.optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay, kind="adamw")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, cfg.iters, cfg.warmup, cfg.cycles))
        S, T, w = cfg.ddim_steps, ctx.T, cfg.s_start - 1.0
        levels = ctx.ddim_timesteps(S).tolist()
        for _ in ctx.steps(cfg.iters):
            with fixed_gate(net, 1.0):  # the adapter on, as in training (probes between iterations see the gate)
                k = int(torch.randint(1, S, ()))
                x = ctx.ddim_partial(net, c, w, S, stop_after=k - 1)
                t_int = T - 1 - (k * T) // S if cfg.timing == "reference" else int(levels[k])
                anchors = anchor_batch(c[0], c_null[0], cfg.anchors, cfg.anchor_set, cfg.anchor_lo, cfg.anchor_hi)
                n = 1 + anchors.shape[0]
                t = torch.full((n + 1,), t_int, device=ctx.device, dtype=torch.long)
                with torch.no_grad():  # ε*(c), ε*(∅) and ε*(anchors) in one batch
                    ref = ctx.eps(frozen, x.repeat(n + 1, 1, 1, 1), t, torch.cat([c, c_null, anchors]))
                    e_pos, e_neu, a_ori = ref[:1], ref[1:2], ref[2:]
                    target = e_neu - cfg.eta * (e_pos - e_neu)
                out = ctx.eps(net, x.repeat(n, 1, 1, 1), t[:n], torch.cat([c, anchors]))
                erase = (out[:1] - target).pow(2).mean()
                anchor = (out[1:] - a_ori).pow(2).mean() if anchors.shape[0] else out.new_zeros(())
                loss = erase + cfg.anchor_weight * anchor
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                ctx.log(loss=loss, erase=erase, anchor=anchor)
        net.eval()
        return ctx.sampler(net)


def sample_anchors(target: Tensor, n: int, lo: float = 0.8, hi: float = 1.2) -> Tensor:
    """``n`` Latent-Anchoring embeddings around ``target`` (L, D): unit directions n ~ N(0, I), accepted with
    probability 1 − cos(n, target), scaled to u‖target‖_F, u ~ U(lo, hi) (the reference's ``sample``)."""
    flat = target.flatten()
    out = []
    while len(out) < n:
        while True:
            d = torch.randn_like(flat)
            d = d / d.norm()
            if float(torch.rand(())) < 1 - float(torch.dot(d, flat) / flat.norm()):
                break
        out.append((lo + (hi - lo) * float(torch.rand(()))) * flat.norm() * d)
    return torch.stack(out).view(n, *target.shape) if n else target.new_zeros((0, *target.shape))


def anchor_batch(target: Tensor, null: Tensor, n: int, which: str, lo: float = 0.8, hi: float = 1.2) -> Tensor:
    """The anchor embeddings the loss sees. ``reference``: the released code interleaves [∅, a_1, ∅, a_2, …]
    and keeps the second half of that list (its guidance-1 prediction drops the first half as if it were the
    unconditional branch); ``random``: the ``n`` anchors."""
    a = sample_anchors(target, n, lo, hi)
    if which == "random":
        return a
    inter = torch.stack([e for pair in zip(null.expand_as(a), a) for e in pair]) if n else a
    return inter[n:]


def lr_factor(schedule: str, total: int, warmup: int, cycles: int):
    """The learning-rate multiplier per step: ``constant``, or diffusers' ``cosine_with_restarts`` (linear
    warm-up, then ``cycles`` hard-restarted cosine decays to 0 over the remaining steps)."""
    if schedule == "constant":
        return lambda step: 1.0

    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))

    return f
