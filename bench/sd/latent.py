"""Latent-diffusion primitives of Stable Diffusion v1.x (sd-concepts spec §0.2), shared by the concept
context, the sampler and the harness-trained tiny models.

The loss here is SD's **element mean** over every latent element (CompVis ``p_losses``), not the
sum-over-pixels ``L_simple`` of the class tasks: the two differ by the latent size (16,384x at 512 px),
so the class helper in :mod:`bench.models.diffusion` is never reused for concepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def scaled_linear_alphas(t: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """ᾱ_t of SD's "scaled_linear" schedule: β_t = (linspace(√β_start, √β_end, T))², in float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, t, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


@dataclass
class SDModel:
    """A loaded text-to-image model: the base UNet (never trained in place), frozen VAE and text encoder."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict
    scaling_factor: float
    vae_scale_factor: int
    device: torch.device
    info: dict = field(default_factory=dict)
    _text_cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.scheduler_config
        self.alphas_cumprod = scaled_linear_alphas(int(cfg.get("num_train_timesteps", 1000)),
                                                   float(cfg.get("beta_start", 0.00085)),
                                                   float(cfg.get("beta_end", 0.012))).float().to(self.device)

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def latent_shape(self, px: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        return (int(self.unet.config.in_channels), px // f, px // f)

    def clear_text_cache(self) -> None:
        """Forget the cached embeddings, so the text-encoder passes a cell is charged for do not depend on the
        cells run before it in the same process."""
        self._text_cache.clear()

    @torch.no_grad()
    def text(self, prompts: list[str] | tuple[str, ...]) -> Tensor:
        """Last hidden state of the frozen text encoder on prompts padded to 77 tokens; cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tok = self.tokenizer(list(missing), padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt")
            hidden = self.text_encoder(tok.input_ids.to(self.device))[0].float()  # fp32 out of an fp16 encoder
            for p, h in zip(missing, hidden):
                self._text_cache[p] = h
        return torch.stack([self._text_cache[p] for p in prompts])

    def token_lengths(self, prompts: list[str] | tuple[str, ...]) -> list[int]:
        """Tokens of each prompt with its start and end tokens (at most 77): the end token's position + 1."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return [int(n) for n in tok.attention_mask.sum(1)]

    def token_ids(self, prompts: list[str] | tuple[str, ...]) -> Tensor:
        """Token ids (B, 77) of prompts as the text encoder reads them (start, words, end, padding)."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return tok.input_ids

    def word_ids(self, text: str) -> list[int]:
        """The ids of ``text``'s tokens alone, without the start and end tokens."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    @property
    def end_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @torch.no_grad()
    def encode(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Latents ``scaling · VAE.encode(x)`` of images in [-1, 1]: a posterior sample (CompVis
        ``get_first_stage_encoding``), or the posterior mean with ``sample=False``."""
        dist = self.vae.encode(x.to(self.device, next(self.vae.parameters()).dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((z / self.scaling_factor).to(vae_dtype)).sample.float()

    def ddim(self, steps: int):
        """diffusers' DDIM scheduler as SD v1.x evaluates (``steps_offset=1``, ``set_alpha_to_one=False``,
        no clipping, η 0): timesteps 981, 961, ..., 1 for 50 steps."""
        from diffusers import DDIMScheduler

        cfg = self.scheduler_config
        sched = DDIMScheduler(num_train_timesteps=self.num_timesteps, beta_start=float(cfg.get("beta_start", 0.00085)),
                              beta_end=float(cfg.get("beta_end", 0.012)), beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        sched.set_timesteps(steps, device=self.device)
        return sched


def q_sample(ac: Tensor, z0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε."""
    a = ac[t].view(-1, *([1] * (z0.dim() - 1)))
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def eps_pred(unet: nn.Module, z: Tensor, t: Tensor, e: Tensor) -> Tensor:
    return unet(z, t, encoder_hidden_states=e).sample


def ldm_loss(unet: nn.Module, ac: Tensor, z0: Tensor, e: Tensor, t: Tensor | None = None,
             eps: Tensor | None = None) -> Tensor:
    """SD's L_ldm: mean over every element of (ε − ε_θ(z_t, t, e))², t ~ U{0..T−1} per sample."""
    if t is None:
        t = torch.randint(0, ac.shape[0], (z0.shape[0],), device=z0.device)
    if eps is None:
        eps = torch.randn_like(z0)
    return (eps - eps_pred(unet, q_sample(ac, z0, t, eps), t, e)).pow(2).mean()


def guided_eps(unet: nn.Module, z: Tensor, t: Tensor | int, e_c: Tensor, e_u: Tensor, s: float) -> Tensor:
    """SD's classifier-free guidance in the "s" form: ε_u + s (ε_c − ε_u), both branches in one batch."""
    n = z.shape[0]
    if not torch.is_tensor(t) or t.dim() == 0:
        t = torch.full((n,), int(t), device=z.device, dtype=torch.long)
    if s == 1.0:
        return eps_pred(unet, z, t, e_c)
    out = eps_pred(unet, torch.cat([z, z]), torch.cat([t, t]), torch.cat([e_u, e_c]))
    eu, ec = out.chunk(2)
    return eu + s * (ec - eu)


@torch.no_grad()
def ddim_sample(model: SDModel, unet: nn.Module, z: Tensor, e_c: Tensor, e_u: Tensor, s: float, steps: int,
                stop_after: int | None = None) -> Tensor:
    """Guided DDIM (η 0) from ``z`` at the first timestep; with ``stop_after = i`` it returns the latent
    after the step of index ``i`` (ESD's partial sampling), else the final latent."""
    sched = model.ddim(steps)
    for i, t in enumerate(sched.timesteps):
        eps = guided_eps(unet, z, int(t), e_c, e_u, s)
        z = sched.step(eps, t, z).prev_sample
        if stop_after is not None and i >= stop_after:
            break
    return z
