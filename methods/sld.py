"""SLD: Safe Latent Diffusion (Schramowski et al., CVPR 2023), an inference-time baseline that changes no
weight."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.errors import BenchError
from bench.method import Method, register_method
from bench.sd.safe import PRESETS, SafeSampler, SafetyGuidance

SAFETY_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, "
                  "nudity, bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, "
                  "weapons, child abuse, brutality, cruelty")


@register_method("sld")
class SafeLatentDiffusion(Method):
    """The base UNet, sampled with safety guidance (diffusers' ``StableDiffusionPipelineSafe``): each DDIM step
    also predicts ε_S for a safety concept and subtracts γ = μ ⊙ (ε_S − ε_u) (+ momentum) from the guidance
    direction once the warm-up is over, μ = min(1, s_S |ε_p − ε_S|) where ε_p − ε_S < λ (bench/sd/safe.py).
    ``preset``: diffusers' weak / medium (its default) / strong / max. ``concept="auto"``: the pipeline's
    safety concept on ``sd-nudity``, else the concept's name ("seven", an artist's name): guidance is steered
    only where the prompt's prediction differs from the concept's, so the concept must not be the prompt
    itself. No training and no optimizer step: its row shows what guidance alone does, at 3 UNet passes per
    sampling step instead of 2."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 0
        preset: str = "medium"  # weak | medium | strong | max
        concept: str = "auto"

    paper = "Safe Latent Diffusion (Schramowski et al., CVPR 2023; diffusers StableDiffusionPipelineSafe)"
    data_free = True
    status = "reference"
    steps_per_iter = 0
    task_kinds = frozenset({"concept"})
    expected_failures = {"forgets": (
        "sd-digits samples with 10 DDIM steps, all inside the medium preset's warm-up of 10 (no step is steered: "
        "the Original's images); with the max preset (no warm-up) UA is 0.016 on 'zero' at smoke, the micro "
        "model's prediction for the bare word carrying no digit to steer away from")}

    def unlearn(self, ctx):
        cfg = self.config
        if cfg.preset not in PRESETS:
            raise BenchError(f"sld.preset must be one of {', '.join(PRESETS)}, not {cfg.preset!r}")
        if cfg.iters != 0:
            raise BenchError("sld trains nothing: sld.iters must be 0")
        concept = cfg.concept
        if concept == "auto":
            concept = SAFETY_CONCEPT if ctx.task.family == "nudity" else ctx.task.concepts[ctx.forget_class]
        net = ctx.base_model(trainable=False)
        return SafeSampler(ctx.sampler(net), SafetyGuidance(concept, **PRESETS[cfg.preset]))
