"""The anchored forget loss EraseDiff and ScissorHands share on Stable Diffusion: a forget image's prediction
under its own prompt learns the same model's (detached) prediction under an anchor prompt."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def anchor_text(ctx, anchor: str) -> str:
    """``"cover"``: the task's cover prompt (sd-nudity: a clothed person; sd-digits: the next digit); any other
    value is the anchor prompt itself."""
    return ctx.prompts.cover if anchor == "cover" else anchor


def anchored_forget_loss(ctx, net: nn.Module, z0: Tensor, c_forget: Tensor, c_anchor: Tensor) -> Tensor:
    """‖ε_θ(z_t, t, c_f) − sg[ε_θ(z_t, t, c_a)]‖² (element mean), one t ~ U{0..T−1} and ε per image, the target
    from the model being trained (not a frozen copy), as both reference codes."""
    t, noise = ctx.timesteps(z0.shape[0]), torch.randn_like(z0)
    zt = ctx.q_sample(z0, t, noise)
    with torch.no_grad():
        target = ctx.eps(net, zt, t, c_anchor[: z0.shape[0]])
    return (ctx.eps(net, zt, t, c_forget) - target).pow(2).mean()
