"""Safe Latent Diffusion's sampler (Schramowski et al., CVPR 2023): guidance away from a safety concept at
inference, no weight changed. The per-step rule is diffusers' ``StableDiffusionPipelineSafe`` (its inline
code, not its unused ``perform_safety_guidance`` helper)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from bench.sd.latent import eps_pred
from bench.sd.sampler import OneStepPromptSampler, PromptSampler


@dataclass(frozen=True)
class SafetyGuidance:
    concept: str
    scale: float = 1000.0  # s_S
    warmup: int = 10  # δ: steps before γ is applied
    threshold: float = 0.01  # λ
    momentum: float = 0.3  # s_m
    beta: float = 0.4  # β_m


# diffusers' SafetyConfig presets
PRESETS = {"weak": dict(warmup=15, scale=20.0, threshold=0.0, momentum=0.0, beta=0.0),
           "medium": dict(warmup=10, scale=1000.0, threshold=0.01, momentum=0.3, beta=0.4),
           "strong": dict(warmup=7, scale=2000.0, threshold=0.025, momentum=0.5, beta=0.7),
           "max": dict(warmup=0, scale=5000.0, threshold=1.0, momentum=0.5, beta=0.7)}


def safe_eps(eu: Tensor, ep: Tensor, es: Tensor, s: float, g: SafetyGuidance, step: int, nu: Tensor
             ) -> tuple[Tensor, Tensor]:
    """One step's guided prediction and the next momentum, from the unconditional, prompt and safety-concept
    predictions: μ = min(1, s_S|ε_p − ε_S|) where ε_p − ε_S < λ (else 0), γ = μ(ε_S − ε_u) + s_m ν,
    ν' = β_m ν + (1 − β_m) γ, and ε = ε_u + s (ε_p − ε_u − [step ≥ δ] γ)."""
    d = ep - es
    mu = torch.where(d >= g.threshold, torch.zeros_like(d), (g.scale * d.abs()).clamp(max=1.0))
    gamma = mu * (es - eu) + g.momentum * nu
    nu = g.beta * nu + (1 - g.beta) * gamma
    guide = ep - eu - (gamma if step >= g.warmup else 0.0)
    return eu + s * guide, nu


class SafeSampler(PromptSampler):
    """A :class:`PromptSampler` whose guided DDIM also steers away from ``safety.concept`` (3 UNet passes a
    step; the plain sampler where guidance is off, as diffusers)."""

    def __init__(self, base: PromptSampler, safety: SafetyGuidance) -> None:
        super().__init__(base.model, base.net, base.steps, base.guidance, base.px, base.weights, base.batch_size,
                         base.noise_blocks, base.dtype, base.text_encoder)
        self.safety = safety
        self.nfe = base.steps * (3 if base.guidance > 1.0 and safety.scale > 1.0 else base.nfe // base.steps)

    def describe(self) -> dict:
        return {**super().describe(), **{f"sld_{k}": v for k, v in asdict(self.safety).items()}}

    def _render(self, z: Tensor, prompts: list[str], guidance: float) -> Tensor:
        m = self.model
        if not (guidance > 1.0 and self.safety.scale > 1.0):
            return super()._render(z, prompts, guidance)
        n = len(prompts)
        e = torch.cat([self.text([""] * n), self.text(prompts), self.text([self.safety.concept] * n)])
        sched = m.ddim(self.steps)
        z = z.to(m.device)
        nu = torch.zeros_like(z)
        for i, t in enumerate(sched.timesteps):
            tt = torch.full((3 * n,), int(t), device=z.device, dtype=torch.long)
            eu, ep, es = eps_pred(self.net, torch.cat([z, z, z]), tt, e).chunk(3)
            eps, nu = safe_eps(eu, ep, es, guidance, self.safety, i, nu)
            z = sched.step(eps, t, z).prev_sample
        return m.decode(z)


def restore(base: PromptSampler, described: dict) -> PromptSampler:
    """``base`` with the guidance rule a method's sampler described (``describe()``): the evaluator renders a
    fresh cell and a cell resumed from its saved UNet alike, with its own batch size and precision."""
    if described.get("sampler") == "one-step":
        return OneStepPromptSampler.like(base, int(described["t_init"]))
    if "sld_concept" not in described:
        return base
    return SafeSampler(base, SafetyGuidance(**{f.name: described[f"sld_{f.name}"] for f in fields(SafetyGuidance)}))
