"""The DDPM primitives every method shares (methods.md §1, protocol.md §3.1).

Reductions are part of each method's definition and are stated per function: ``per_sample_loss``
SUMS over pixels (one value per sample), ``simple_loss`` then averages over the batch. A PyTorch
``MSELoss`` would instead average over all elements and silently rescale every loss weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

NoiseFn = Callable[[tuple[int, ...]], Tensor]


class Diffusion:
    """Linear-beta DDPM schedule (T=1000) bound to a device, plus the noising/loss/sampling helpers."""

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 device: torch.device | str = "cpu") -> None:
        # diffusers owns the schedule definition; betas are recomputed in float64 and cast, as the
        # reference does, so the float32 constants match its check values (methods.md §10.2)
        sched = DDPMScheduler(num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule="linear")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        if not torch.allclose(betas.float(), sched.betas, atol=1e-7):
            raise RuntimeError("diffusers' linear schedule disagrees with the reference schedule")
        self.T = T
        self.device = torch.device(device)
        self.betas = betas.float().to(self.device)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float().to(self.device)

    # --- schedule lookups -------------------------------------------------------------------
    def _ab(self, t: Tensor, ndim: int) -> Tensor:
        return self.alphas_cumprod[t.long()].view(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward noising ``sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``."""
        ab = self._ab(t, x0.ndim)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Tweedie / DDIM estimate of x0 from an epsilon prediction (no clipping)."""
        ab = self._ab(t, x_t.ndim)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def antithetic_t(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """``u ~ U{0..T-1}^(B//2+1)``, ``t = concat(u, T-1-u)[:B]`` (the reference's draw)."""
        dev = "cpu" if generator is not None else self.device
        u = torch.randint(0, self.T, (batch // 2 + 1,), generator=generator, device=dev)
        return torch.cat([u, self.T - 1 - u])[:batch].to(self.device)

    def uniform_t(self, batch: int, low: int, high: int, generator: torch.Generator | None = None) -> Tensor:
        """``t ~ UniformInt[low, high)``, not antithetic (the SFD losses)."""
        dev = "cpu" if generator is not None else self.device
        return torch.randint(low, high, (batch,), generator=generator, device=dev).to(self.device)

    # --- network calls ----------------------------------------------------------------------
    @staticmethod
    def drop_labels(net: nn.Module, c: Tensor, p_drop: float,
                    generator: torch.Generator | None = None) -> Tensor:
        """Label dropout: each label independently becomes the null class with probability ``p_drop``.

        It is not ``nn.Dropout``: it ignores ``train()``/``eval()`` (methods.md §1.2).
        """
        if p_drop <= 0.0:
            return c
        if p_drop >= 1.0:
            return torch.full_like(c, net.null_class)
        dev = "cpu" if generator is not None else c.device
        drop = torch.rand(c.shape, generator=generator, device=dev).to(c.device) < p_drop
        return torch.where(drop, torch.full_like(c, net.null_class), c)

    def eps(self, net: nn.Module, x: Tensor, t: Tensor, c: Tensor, p_drop: float = 0.0) -> Tensor:
        """``eps(net; x, t, c, p_drop)``; the timestep is passed as a float."""
        return net(x, t.float(), self.drop_labels(net, c, p_drop))

    def cfg_eps(self, net: nn.Module, x: Tensor, t: Tensor, c: Tensor, w: float) -> Tensor:
        """Classifier-free guidance in the reference "(1+w)" form:
        ``(1 + w) eps(x, t, c) - w eps(x, t, null)``. ``w = 0`` runs only the conditional pass;
        otherwise both passes run as one batch of 2B (2 network evaluations per image)."""
        if w == 0:
            return net(x, t.float(), c)
        null = torch.full_like(c, net.null_class)
        both = net(torch.cat([x, x]), torch.cat([t, t]).float(), torch.cat([c, null]))
        e_c, e_u = both.chunk(2)
        return (1.0 + w) * e_c - w * e_u

    # --- losses -----------------------------------------------------------------------------
    def per_sample_loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0,
                        t: Tensor | None = None, noise: Tensor | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
        """``l_i = sum_pixels (eps_i - eps(net; q(x0_i, t_i, eps_i), t_i, c_i, p_drop))^2``, shape (B,).

        ``t`` defaults to a fresh antithetic draw, ``noise`` to fresh N(0, I).
        """
        if t is None:
            t = self.antithetic_t(x0.shape[0], generator)
        if noise is None:
            dev = "cpu" if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
        pred = self.eps(net, self.q_sample(x0, t, noise), t, c, p_drop)
        return (noise - pred).pow(2).flatten(1).sum(dim=1)

    def simple_loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0,
                    t: Tensor | None = None, noise: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """``L_simple``: SUM over pixels, MEAN over the batch (methods.md §1.3)."""
        return self.per_sample_loss(net, x0, c, p_drop, t, noise, generator).mean()

    # --- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, net: nn.Module, labels: Tensor, steps: int, w: float, eta: float,
               noise: NoiseFn, on_step: Callable[[], object] | None = None) -> Tensor:
        """The reference "generalized" sampler (protocol.md §3.1): uniform skips, no x0 clipping,
        ``eta = 1`` is ancestral DDPM with the posterior variance. ``noise(shape)`` supplies every
        Gaussian draw, so the caller controls reproducibility per image; ``on_step()`` runs after each
        step (a progress bar)."""
        skip = self.T // steps
        seq = list(range(0, self.T, skip))
        prev = [-1] + seq[:-1]
        n = labels.shape[0]
        x = noise(())
        for t_i, tp_i in zip(reversed(seq), reversed(prev)):
            t = torch.full((n,), t_i, device=self.device, dtype=torch.long)
            e = self.cfg_eps(net, x, t, labels, w)
            ab_t = self.alphas_cumprod[t_i]
            ab_p = self.alphas_cumprod[tp_i] if tp_i >= 0 else torch.tensor(1.0, device=self.device)
            x0 = (x - (1 - ab_t).sqrt() * e) / ab_t.sqrt()
            sigma = eta * ((1 - ab_t / ab_p) * (1 - ab_p) / (1 - ab_t)).sqrt()
            x = ab_p.sqrt() * x0 + (1 - ab_p - sigma**2).clamp(min=0).sqrt() * e
            if tp_i >= 0 and eta > 0:
                x = x + sigma * noise(())
            if on_step is not None:
                on_step()
        return x


def to_uint8(x: Tensor) -> Tensor:
    """Map model space [-1, 1] to uint8 pixels: clamp((x+1)/2) then round (no per-image stretch)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    return x.float() / 127.5 - 1.0


def sfd_constants(diffusion: Diffusion, t_init: int) -> tuple[float, float, float]:
    """``(a0, b0, sigma0)`` at ``t_init``: ``sqrt(ab)``, ``sqrt(1-ab)``, ``b0/a0`` (methods.md §10.2)."""
    ab = float(diffusion.alphas_cumprod[t_init])
    a0, b0 = math.sqrt(ab), math.sqrt(1 - ab)
    return a0, b0, b0 / a0
