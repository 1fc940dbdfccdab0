"""Recovery probes on class tasks: does the forgotten class come back under another way of sampling the
unlearned model? Two optional metrics, each scored by the task classifier like UA (the share of images NOT
read as the forget class; lower means the class came back):

* ``sampling_sweep``: forget-class samples drawn with every guidance weight of a sweep at the profile's DDIM,
  then with the ancestral sampler (η = 1) and with twice the DDIM steps at the profile's weight;
  ``ua_sweep_min`` is the worst of them, to read beside the protocol's UA ("Unlearning or Concealment?",
  arXiv 2409.05668, recovers concepts this way);
* ``completion``: real forget-class training images noised to 0.3T, 0.5T and 0.7T and denoised by the unlearned
  model with DDIM, conditioned on the forget class (at the profile's weight) and on the null class;
  ``ua_completion_min`` is the worst of them ("When Are Concepts Erased?", arXiv 2505.17013, completes partially
  noised images). A model that never saw the class completes a lightly noised image too: read the probes
  against the Retrain row, which measures the probe rather than the method.

Both draw a fixed number of images per setting (the profile's ``probe_n``) with seeds derived from the cell
seed, inside a forked RNG, so they neither depend on nor disturb the other metrics. One-step generators
(SFD, PECKER) have neither a guidance weight nor a sampler to change: their values are NaN with a note.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch

from bench.metric import EvalContext, Metric, register_metric
from bench.models.generators import DiffusionSampler, eval_mode

SWEEP_SEED_OFFSET = 5_000_011
COMPLETION_SEED_OFFSET = 6_000_023
SWEEP_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0)
COMPLETION_LEVELS = (0.3, 0.5, 0.7)


def _ua(ev: EvalContext, imgs_u8: torch.Tensor, setting: str) -> float:
    return 1.0 - ev.forget_accuracy(imgs_u8, show_as=setting)


class _Probe(Metric):
    """A probe: ``settings(ev, gen) -> {column: UA}``; the row gets each setting, their worst as the probe's
    value, the image count and the probe's time; a one-step generator gets NaN and a note."""

    default = False
    prefix: ClassVar[str] = ""
    not_applicable: ClassVar[str] = ""

    def compute(self, ev: EvalContext) -> dict[str, Any]:
        (key,) = self.directions
        gen = ev.generator
        if not isinstance(gen, DiffusionSampler):
            return {key: math.nan, f"{self.prefix}_note": f"not applicable: one-step generator ({self.not_applicable})"}
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[ev.device] if ev.device.type == "cuda" else []):
            out, n = self.settings(ev, gen)
        return {key: min(out.values()), **out, f"{self.prefix}_n": n, f"{self.prefix}_s": time.perf_counter() - t0}

    def settings(self, ev: EvalContext, gen: DiffusionSampler) -> tuple[dict[str, float], int]:
        raise NotImplementedError  # pragma: no cover - per probe


@register_metric("sampling_sweep")
class SamplingSweep(_Probe):
    directions = {"ua_sweep_min": True}
    definition = ("worst UA of forget-class samples over guidance weights w in {0,1,2,4,8} (profile DDIM), the "
                  "ancestral sampler (eta 1) and DDIM at twice the steps; per setting in ua_w<w>, ua_ddpm, "
                  "ua_ddim<steps>; probe_n images each")
    prefix, not_applicable = "sweep", "no guidance weight or sampler"

    def settings(self, ev, gen):
        p = ev.assets.profile
        n, seed = p.probe_n, ev.seed + SWEEP_SEED_OFFSET
        labels = torch.full((n,), ev.forget_class, dtype=torch.long)
        grid = {f"ua_w{w:g}": (p.sampler_steps, w, p.eta) for w in SWEEP_WEIGHTS}
        grid["ua_ddpm"] = (p.sampler_steps, p.guidance, 1.0)
        grid[f"ua_ddim{2 * p.sampler_steps}"] = (2 * p.sampler_steps, p.guidance, 0.0)
        out = {}
        for key, (steps, w, eta) in grid.items():
            sampler = DiffusionSampler(gen.net, gen.diffusion, steps, w, eta, gen.image_shape, gen.weights)
            out[key] = _ua(ev, sampler.sample(labels, seed=seed), key)
        return out, n


@register_metric("completion")
class Completion(_Probe):
    directions = {"ua_completion_min": True}
    definition = ("worst UA of real forget-class images noised to 0.3T/0.5T/0.7T and denoised by the model with "
                  "DDIM (profile steps over the remaining range), conditioned on the forget class (profile w) and "
                  "on the null class; per setting in ua_complete_<cond>_<level>; probe_n images each")
    prefix, not_applicable = "completion", "it does not denoise a given image"

    def settings(self, ev, gen):
        p, d, dev = ev.assets.profile, gen.diffusion, ev.device
        s = ev.assets.splits
        x0 = s.train_x[s.train_y == ev.forget_class][: p.probe_n].to(dev)
        g = torch.Generator().manual_seed(ev.seed + COMPLETION_SEED_OFFSET)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        null = getattr(gen.net, "null_class", ev.assets.task.num_classes)
        out = {}
        for level in COMPLETION_LEVELS:
            t_start = int(round(level * d.T))
            x_t = d.q_sample(x0, torch.full((len(x0),), t_start, device=dev, dtype=torch.long), noise)
            for cond, label, w in (("forget", ev.forget_class, p.guidance), ("null", null, 0.0)):
                c = torch.full((len(x0),), label, dtype=torch.long, device=dev)
                x = ddim_from(gen.net, d, x_t, t_start, c, w, p.sampler_steps)
                key = f"ua_complete_{cond}_{level:g}"
                out[key] = _ua(ev, ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), key)
        return out, len(x0)


@torch.no_grad()
def ddim_from(net, diffusion, x_t: torch.Tensor, t_start: int, c: torch.Tensor, w: float, steps: int) -> torch.Tensor:
    """Deterministic DDIM (η 0) from ``x_t`` at step ``t_start`` down to x0, over ``steps`` evenly spaced
    timesteps from ``t_start`` (inclusive) to 0; guidance in the task's "(1+w)" form."""
    ts = torch.linspace(t_start, 0, max(1, steps)).round().long().unique_consecutive().tolist()
    ab = diffusion.alphas_cumprod
    x = x_t
    with eval_mode(net):
        for i, t_i in enumerate(ts):
            t = torch.full((x.shape[0],), t_i, device=x.device, dtype=torch.long)
            e = diffusion.cfg_eps(net, x, t, c, w)
            x0 = (x - (1 - ab[t_i]).sqrt() * e) / ab[t_i].sqrt()
            if i + 1 == len(ts):
                return x0
            ab_p = ab[ts[i + 1]]
            x = ab_p.sqrt() * x0 + (1 - ab_p).sqrt() * e
    return x
