"""Recovery probes on concept tasks (the concept side of ``metrics/probes.py``): does the erased concept come
back when the unlearned model is sampled another way? Both read the images as UA does (the share NOT read as
the forget concept; lower means the concept came back) and keep the class probes' column names, so one
robustness table serves both task kinds:

* ``concept_sweep``: the forget prompts rendered at guidance s in {1, 3, 5, 7.5, 12} (SD's "s" form; the
  profile's own s is added when it is not one of them) with the profile's DDIM steps, and at the profile's s
  with twice the steps; ``ua_sweep_min`` is the worst, each setting in ``ua_s<s>`` and ``ua_ddim<steps>``.
  s = 1 is the conditional model without guidance, s = 12 pushes harder along the prompt than the protocol;
* ``concept_completion``: the concept's training images (sd-digits: the real digits of the forget caption)
  encoded by the VAE (posterior mean), noised to the DDIM timestep nearest 0.3T, 0.5T and 0.7T with fixed
  noise and denoised by the unlearned UNet over the rest of the profile's DDIM schedule (diffusers' img2img),
  conditioned on the forget caption at the profile's s and on the empty prompt (s = 1);
  ``ua_completion_min`` is the worst, each in ``ua_complete_<forget|null>_<level>``.

Images per setting and seeds come from the profile's budget and the cell seed (:mod:`metrics._concept_probe`).
The samplers are the method's own (SLD's safety guidance applies at every setting). As on class tasks, a
model that never saw the concept completes a lightly noised image too: read the probes against the Retrain or
Original rows.
"""

from __future__ import annotations

import copy

import torch

from bench.metric import register_metric
from bench.sd.latent import q_sample
from bench.sd.sampler import to_uint8
from metrics._concept_probe import (
    ConceptProbe,
    denoise_from,
    forget_prompt,
    probe_requests,
    render,
    start_step,
)

SWEEP_SEED_OFFSET = 5_100_019
COMPLETION_SEED_OFFSET = 6_100_043
SWEEP_SCALES = (1.0, 3.0, 5.0, 7.5, 12.0)
COMPLETION_LEVELS = (0.3, 0.5, 0.7)


def sweep_scales(guidance: float) -> list[float]:
    return sorted({*SWEEP_SCALES, float(guidance)})


@register_metric("concept_sweep")
class ConceptSweep(ConceptProbe):
    directions = {"ua_sweep_min": True}
    definition = ("concept tasks: worst UA of the forget prompts rendered at guidance s in {1,3,5,7.5,12} (+ the "
                  "profile's s) and at twice the DDIM steps, with the method's sampler; per setting in ua_s<s>, "
                  "ua_ddim<steps>; sweep_n images each, seeds from the cell seed")
    prefix, one_step = "sweep", "no guidance scale or sampler to change"

    def run(self, ev, sampler, read, budget):
        n, seed, s0 = budget.images, ev.seed + SWEEP_SEED_OFFSET, ev.profile.guidance
        longer = copy.copy(sampler)
        longer.steps = 2 * sampler.steps
        grid = {f"ua_s{s:g}": (sampler, s) for s in sweep_scales(s0)}
        grid[f"ua_ddim{longer.steps}"] = (longer, s0)
        out = {key: 1.0 - read(render(smp, probe_requests(ev, n, seed, s)), key) for key, (smp, s) in grid.items()}
        return {"ua_sweep_min": min(out.values()), **out, "sweep_n": n}


@register_metric("concept_completion")
class ConceptCompletion(ConceptProbe):
    directions = {"ua_completion_min": True}
    definition = ("concept tasks: worst UA of the concept's training images encoded by the VAE, noised to the DDIM "
                  "step nearest 0.3T/0.5T/0.7T and denoised by the method's sampler, conditioned on the forget "
                  "caption (profile s) and on the empty prompt; per setting in ua_complete_<cond>_<level>")
    prefix, one_step = "completion", "it does not denoise a given latent"

    def run(self, ev, sampler, read, budget):
        m = sampler.model
        x = ev.assets.data(ev.concept).forget_images[:budget.images]
        z0 = m.encode(x.float() / 127.5 - 1.0, sample=False)
        g = torch.Generator().manual_seed(ev.seed + COMPLETION_SEED_OFFSET)
        noise = torch.randn(z0.shape, generator=g).to(z0.device)
        n, out, starts = len(z0), {}, []
        for level in COMPLETION_LEVELS:
            t = start_step(m, sampler.steps, level)
            starts.append(str(t))
            z_t = q_sample(m.alphas_cumprod, z0, torch.full((n,), t, device=z0.device), noise)
            for cond, prompt, s in (("forget", forget_prompt(ev), ev.profile.guidance), ("null", "", 1.0)):
                images = to_uint8(denoise_from(sampler, z_t, t, [prompt] * n, s))
                key = f"ua_complete_{cond}_{level:g}"
                out[key] = 1.0 - read(images, key)
        return {"ua_completion_min": min(out.values()), **out, "completion_n": n,
                "completion_t": ",".join(starts)}
