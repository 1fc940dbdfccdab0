"""Relearn time on concept tasks (the concept side of ``metrics/relearn.py``, same rule): how many fine-tuning
steps on a few of the concept's images bring the erased concept back?

From a copy of the unlearned UNet (the evaluated one is never modified), fine-tune every weight with SD's
denoising loss (L_ldm, element mean) on the first ``images`` training images of the concept (VAE posterior
means) captioned with the forget caption, 10% of them with the empty prompt (caption dropout, as the
sd-digits model was trained), gradient norm clipped at 1.0, Adam; batches, t and noise from a seed derived
from the cell seed. Every ``relearn_every`` steps the forget prompts are rendered on fixed noise by the
method's sampler with the fine-tuned copy; ``relearn_steps`` is the first step count at which at least half
of them are read as the concept again (0 if already so before any step), NaN with ``relearn_censored = 1``
when the cap comes first. Recorded without a direction, as on class tasks.
"""

from __future__ import annotations

import copy

import torch

from bench.metric import register_metric
from bench.models.nets import clone_without_hooks
from bench.sd.latent import ldm_loss
from metrics._concept_probe import ConceptProbe, forget_prompt, probe_requests, render

RELEARN_SEED_OFFSET = 4_100_051


@register_metric("concept_relearn")
class ConceptRelearn(ConceptProbe):
    directions = {"relearn_steps": None, "relearn_censored": None}
    definition = ("concept tasks: fine-tuning steps (L_ldm on a few of the concept's images with the forget "
                  "caption, Adam, from a copy of the unlearned UNet) until at least half of the forget prompts' "
                  "images are read as the concept again; checked every K steps; NaN with relearn_censored=1 at "
                  "the cap")
    prefix, one_step = "relearn", "no diffusion model to fine-tune"
    threshold = 0.5
    p_drop = 0.1
    clip = 1.0

    def run(self, ev, sampler, read, budget):
        b = budget
        base = {"relearn_every": b.relearn_every, "relearn_cap": b.relearn_cap, "relearn_threshold": self.threshold,
                "relearn_batch": b.relearn_batch, "relearn_lr": b.relearn_lr}
        seed = ev.seed + RELEARN_SEED_OFFSET
        net = clone_without_hooks(sampler.net).requires_grad_(True)  # no counting hooks on the copy
        relearner = copy.copy(sampler)
        relearner.net = net
        requests = probe_requests(ev, b.images, seed, ev.profile.guidance)
        acc = acc0 = read(render(relearner, requests))
        steps: int | None = 0
        if acc < self.threshold:
            steps, acc = self._fine_tune(ev, relearner, read, requests, b, seed)
        censored = steps is None
        return {"relearn_steps": float("nan") if censored else float(steps), "relearn_censored": float(censored),
                "relearn_acc_f0": acc0, "relearn_acc_f_last": acc, "relearn_n": len(requests), **base,
                "relearn_note": f"not relearned within {b.relearn_cap} steps" if censored else ""}

    def _fine_tune(self, ev, relearner, read, requests, b, seed) -> tuple[int | None, float]:
        """(the first checked step whose renders are read as the concept often enough or None, the last share)"""
        m, net = relearner.model, relearner.net
        x = ev.assets.data(ev.concept).forget_images[:b.images]
        z0 = torch.cat([m.encode(x[i:i + relearner.batch_size].float() / 127.5 - 1.0, sample=False)
                        for i in range(0, len(x), relearner.batch_size)])
        with torch.no_grad():  # a method's own text encoder (AdvUnlearn) would otherwise join the graph
            e_c, e_u = relearner.text([forget_prompt(ev)]), relearner.text([""])
        g = torch.Generator().manual_seed(seed)
        ac, dev = m.alphas_cumprod, z0.device
        opt = torch.optim.Adam(net.parameters(), lr=b.relearn_lr)
        net.train()
        acc = float("nan")
        for step in range(1, b.relearn_cap + 1):
            idx = torch.randint(0, len(z0), (b.relearn_batch,), generator=g)
            drop = (torch.rand(b.relearn_batch, generator=g) < self.p_drop).to(dev).view(-1, 1, 1)
            t = torch.randint(0, ac.shape[0], (b.relearn_batch,), generator=g).to(dev)
            eps = torch.randn((b.relearn_batch, *z0.shape[1:]), generator=g).to(dev)
            loss = ldm_loss(net, ac, z0[idx.to(dev)], torch.where(drop, e_u, e_c), t, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.clip)
            opt.step()
            if step % b.relearn_every == 0 or step == b.relearn_cap:
                # rendering puts net back in train mode
                acc = read(render(relearner, requests), "relearn, last check")
                if acc >= self.threshold:
                    return step, acc
        return None, acc
