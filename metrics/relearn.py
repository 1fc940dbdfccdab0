"""Relearn time (RT, methods.md §12.4): how many fine-tuning steps on the real forget data bring the
forgotten class back.

Starting from a COPY of the evaluated network (``ev.generator.net``; the evaluated network itself
is never modified), fine-tune on the real forget-class training images (the task's train split,
class ``c_f``) with ``L_simple`` (label dropout 0.1 and clip_norm 1.0, the base model's recipe),
Adam lr 1e-4, batch 128. Every ``every`` steps draw ``n_samples`` forget-class samples with the
task profile's evaluation sampler (``DiffusionSampler`` with the profile's steps, guidance and eta)
and classify them; RT is the first step count at which the forget-class accuracy reaches
``threshold`` = 0.5 (i.e. UA falls to 0.5 or below). A model that already has acc_f >= 0.5 before
any step gets RT = 0. If the cap is reached first, ``relearn_steps`` is NaN and
``relearn_censored`` = 1 (the row then says "not relearned within the cap").

Harness choices: the threshold 0.5 and the check interval 50 are the spec's; the caps, the sample
count and the check interval on the small profiles are scaled so the metric stays cheap
(``smoke``: check every 10 steps, cap 40, 16 samples; ``fast``: every 10, cap 300, 32 samples;
other profiles: every 50, cap 2000, 64 samples). Label dropout 0.1 and clipping are not given by
the spec (which says only ``L_simple``); they follow the pretraining recipe. The fine-tune and the
sampling use fixed seeds derived from the cell seed and run inside a forked RNG, so the metric
neither depends on nor disturbs the other metrics. One-step generators (SFD, PECKER) have no
diffusion model to fine-tune: RT is NaN with a ``relearn_note``. RT is recorded without a
direction: whether relearning quickly is good or bad is not settled (reviewer 1 reads it as
lower-is-better; the paper's definition is unknown).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.datasets.streams import batch_stream
from bench.metric import EvalContext, Metric, register_metric
from bench.models.generators import DiffusionSampler
from bench.models.nets import clone_without_hooks

RELEARN_SEED_OFFSET = 4_000_037


@register_metric("relearn")
class RelearnTime(Metric):
    directions = {"relearn_steps": None, "relearn_censored": None}
    definition = ("RT: fine-tuning steps (L_simple on real D_f, Adam 1e-4, batch 128) from a copy of the "
                  "evaluated model until the forget-class accuracy of its samples reaches 0.5; checked every "
                  "K steps; NaN with relearn_censored=1 when the cap is reached first (methods.md §12.4)")
    version = "1"
    default = False

    threshold: float = 0.5
    lr: float = 1e-4
    batch: int = 128
    p_drop: float = 0.1
    clip: float = 1.0
    #: per profile name: (check every K steps, cap in steps, forget-class samples per check)
    schedule: dict[str, tuple[int, int, int]] = {"smoke": (10, 40, 16), "fast": (10, 300, 32)}
    default_schedule: tuple[int, int, int] = (50, 2000, 64)

    def __init__(self, every: int | None = None, cap: int | None = None,
                 n_samples: int | None = None) -> None:
        self._override = (every, cap, n_samples)

    def settings(self, profile_name: str) -> tuple[int, int, int]:
        every, cap, n = self.schedule.get(profile_name, self.default_schedule)
        o_every, o_cap, o_n = self._override
        return (o_every or every, o_cap if o_cap is not None else cap, o_n or n)

    def compute(self, ev: EvalContext) -> dict[str, Any]:
        gen = ev.generator
        every, cap, n_samples = self.settings(ev.assets.profile.name)
        base = {"relearn_every": every, "relearn_cap": cap, "relearn_threshold": self.threshold}
        if gen.kind == "one-step" or not isinstance(gen, DiffusionSampler):
            return {"relearn_steps": math.nan, "relearn_censored": math.nan, **base,
                    "relearn_note": "not applicable: one-step generator (no diffusion model to fine-tune)"}
        with torch.random.fork_rng(devices=[ev.device] if ev.device.type == "cuda" else []):
            steps, acc0, acc_last = self._relearn(ev, gen, every, cap, n_samples)
        censored = steps is None
        return {"relearn_steps": math.nan if censored else float(steps), "relearn_censored": float(censored),
                "relearn_acc_f0": acc0, "relearn_acc_f_last": acc_last, **base,
                "relearn_note": f"not relearned within {cap} steps" if censored else ""}

    def _relearn(self, ev: EvalContext, gen: DiffusionSampler, every: int, cap: int, n_samples: int):
        p = ev.assets.profile
        dev = ev.device
        net = clone_without_hooks(gen.net)  # no counting hooks on the copy
        for q in net.parameters():
            q.requires_grad_(True)
        net.to(dev)
        sampler = DiffusionSampler(net, gen.diffusion, p.sampler_steps, p.guidance, p.eta, gen.image_shape,
                                   gen.weights)
        labels = torch.full((n_samples,), ev.forget_class, dtype=torch.long)
        seed = ev.seed + RELEARN_SEED_OFFSET

        def acc_f() -> float:
            return ev.forget_accuracy(sampler.sample(labels, seed=seed), show_as="relearn, last check")

        acc = acc0 = acc_f()
        if acc >= self.threshold:
            return 0, acc0, acc
        s = ev.assets.splits
        keep = s.train_y == ev.forget_class
        torch.manual_seed(seed)
        stream = batch_stream(s.train_x[keep], s.train_y[keep], self.batch, seed, dev)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8)
        d = gen.diffusion
        net.train()
        for step in range(1, cap + 1):
            x, y = next(stream)
            loss = d.simple_loss(net, x, y, p_drop=self.p_drop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.clip)
            opt.step()
            if step % every == 0 or step == cap:
                acc = acc_f()
                net.train()
                if acc >= self.threshold:
                    return step, acc0, acc
        return None, acc0, acc
