"""What a concept method returns and the evaluator renders: ``sample(requests) -> uint8 (N, 3, H, W)``.

A request is one image: (prompt, seed, k, guidance) of an evaluation set. The initial latent of image k
of a row with seed S is row k of one float32 ``randn`` block drawn from a CPU generator seeded S (SD's
reference scripts), always drawn whole, so an image never depends on the batch, the shard or which
other rows are rendered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bench.models.generators import eval_mode
from bench.sd.latent import SDModel, ddim_sample, eps_pred
from bench.sd.prompts import initial_noise


def to_uint8(x: Tensor) -> Tensor:
    """SD's export: round(255 · clamp(x/2 + 0.5, 0, 1)), no per-image stretch."""
    return (x.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)


class PromptSampler:
    """Guided DDIM over a (possibly unlearned) UNet with the task's frozen VAE and text encoder, or with the
    method's own ``text_encoder`` (AdvUnlearn), which then encodes the prompt and the empty prompt alike."""

    kind = "multi-step"

    def __init__(self, model: SDModel, unet: nn.Module, steps: int, guidance: float, px: int,
                 weights: str = "final", batch_size: int = 16, noise_blocks: int = 1,
                 dtype: torch.dtype = torch.float32, text_encoder: nn.Module | None = None) -> None:
        self.model, self.net, self.steps, self.guidance, self.px = model, unet, steps, guidance, px
        self.text_encoder = text_encoder
        self.weights, self.batch_size, self.noise_blocks, self.dtype = weights, batch_size, noise_blocks, dtype
        self.nfe = steps * (1 if guidance == 1.0 else 2)

    def describe(self) -> dict:
        return {"output": self.kind, "nfe_declared": self.nfe, "weights": self.weights, "sampler": "ddim",
                "sampler_steps": self.steps, "eta": 0.0, "guidance_s": self.guidance,
                "guidance_w": self.guidance - 1.0, "guidance_form": "s", "px": self.px,
                "noise_mode": f"cpu-block x{self.noise_blocks}", "dtype_sample": str(self.dtype).split(".")[-1],
                "text_encoder": "base" if self.text_encoder is None else "unlearned"}

    def text(self, prompts: list[str]) -> Tensor:
        """Prompt embeddings from the sampler's text encoder."""
        if self.text_encoder is None:
            return self.model.text(prompts)
        ids = self.model.token_ids(prompts).to(self.model.device)
        with eval_mode(self.text_encoder):
            return self.text_encoder(ids)[0].float()

    def initial(self, requests: Sequence, block: int) -> Tensor:
        shape = self.model.latent_shape(self.px)
        cache: dict[int, Tensor] = {}
        out = []
        for r in requests:
            if r.seed not in cache:
                cache[r.seed] = initial_noise(r.seed, max(1, block // self.noise_blocks), shape, self.noise_blocks)
            out.append(cache[r.seed][r.k])
        return torch.stack(out)

    def _render(self, z: Tensor, prompts: list[str], guidance: float) -> Tensor:
        m = self.model
        e_c, e_u = self.text(prompts), self.text([""] * len(prompts))
        z = ddim_sample(m, self.net, z.to(m.device), e_c, e_u, guidance, self.steps)
        return m.decode(z)

    @torch.no_grad()
    def sample(self, requests: Sequence, block: int = 1, on_batch: Callable[[int, Tensor], None] | None = None
               ) -> Tensor:
        """uint8 images on the CPU, one per request, in request order; ``block`` is the images per row."""
        out = []
        device_type = self.model.device.type
        amp = torch.autocast(device_type, dtype=self.dtype) if self.dtype != torch.float32 else contextlib.nullcontext()
        with eval_mode(self.net), amp:
            for s in range(0, len(requests), self.batch_size):
                chunk = list(requests[s:s + self.batch_size])
                z = self.initial(chunk, block)
                by_guidance: dict[float, list[int]] = {}
                for i, r in enumerate(chunk):
                    by_guidance.setdefault(float(r.guidance), []).append(i)
                imgs = torch.empty((len(chunk), 3, self.px, self.px), dtype=torch.uint8)
                for g, idx in by_guidance.items():
                    x = self._render(z[idx], [chunk[i].prompt for i in idx], g)
                    imgs[idx] = to_uint8(x).cpu()
                if on_batch is not None:
                    on_batch(s, imgs)
                out.append(imgs)
        return torch.cat(out) if out else torch.empty((0, 3, self.px, self.px), dtype=torch.uint8)


class OneStepPromptSampler(PromptSampler):
    """A one-step generator (SFD, PECKER, a user's SiD-LSG UNet): one UNet call per image at ``t_init`` on the
    evaluation set's latent noise scaled to that level, ``x̂0 = (σ z − σ ε(σ z, t_init, e)) / √ᾱ`` with
    ``σ = √(1 − ᾱ_{t_init})``, decoded by the VAE. Guidance was distilled into the network: a request's guidance
    weight is not used, and NFE is 1."""

    kind = "one-step"

    def __init__(self, model: SDModel, unet: nn.Module, t_init: int, px: int, weights: str = "ema",
                 batch_size: int = 16, noise_blocks: int = 1, dtype: torch.dtype = torch.float32,
                 text_encoder: nn.Module | None = None) -> None:
        super().__init__(model, unet, 1, 1.0, px, weights, batch_size, noise_blocks, dtype, text_encoder)
        self.t_init = int(t_init)
        self.nfe = 1

    @classmethod
    def like(cls, base: PromptSampler, t_init: int) -> OneStepPromptSampler:
        """The one-step sampler with ``base``'s model, network, size, batch, noise and precision."""
        return cls(base.model, base.net, t_init, base.px, base.weights, base.batch_size, base.noise_blocks,
                   base.dtype, base.text_encoder)

    def describe(self) -> dict:
        return {**super().describe(), "output": self.kind, "nfe_declared": 1, "sampler": "one-step",
                "sampler_steps": 1, "guidance_s": 1.0, "guidance_w": 0.0, "t_init": self.t_init}

    def x0(self, z: Tensor, e: Tensor) -> Tensor:
        ab = float(self.model.alphas_cumprod[self.t_init])
        sigma = (1.0 - ab) ** 0.5
        x = sigma * z
        t = torch.full((z.shape[0],), self.t_init, dtype=torch.long, device=z.device)
        return (x - sigma * eps_pred(self.net, x, t, e)) / ab ** 0.5

    def _render(self, z: Tensor, prompts: list[str], guidance: float) -> Tensor:
        m = self.model
        return m.decode(self.x0(z.to(m.device), self.text(prompts)))
