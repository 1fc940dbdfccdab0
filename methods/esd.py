"""ESD: erasing a concept by negative guidance (Gandikota et al., ICCV 2023), ESD-x and ESD-u."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.method import Method, register_method
from methods._sd import merge_presets, per_task


@register_method("esd")
class ESD(Method):
    """The edited UNet's conditional prediction for the erase prompt c learns the frozen model's
    negatively guided one, ε* = ε*(z,t,∅) − η (ε*(z,t,c) − ε*(z,t,∅)), on latents z drawn by partial guided
    DDIM with the edited model itself (data-free; Reference ``train-esd.py``, sd-concepts spec §3.1).

    * ``params="auto"`` takes the task's choice: ESD-u (``noxattn``: nudity, objects, digits) or ESD-x
      (``xattn``: styles, celebrities).
    * ``esd_timing="reference"`` reproduces the paper code's offset: for k ~ U{0..S−1} the latent is the one
      after the DDIM step of countdown index max(k−1, 0) (51−k of 50 steps), scored at t ~ U[1000k/S,
      1000(k+1)/S), about 40 DDPM steps below its noise level. ``"aligned"`` runs j ~ U{0..S−1} steps and
      scores at the next DDIM timestep, where the latent actually is.
    * Only the ``compvis`` variant (1000 iterations, lr 1e-5, η 1, s_start 3) is implemented; the
      ``diffusers-2024`` rewrite is not.
    * Class tasks are not supported: ESD needs a text prompt to erase.
    * sd-digits: the reference lr 1e-5, 200 iterations (also in ``smoke``: at 100 nothing is forgotten yet)
      and the task's 10 DDIM steps.
    """

    @dataclass(frozen=True)
    class Config:  # unused: ESD has no class-task variant
        iters: int = 0

    @dataclass(frozen=True)
    class ConceptConfig:
        iters: int = 1000
        lr: float = 1e-5
        eta: float = 1.0  # negative-guidance strength
        s_start: float = 3.0  # guidance of the partial DDIM that draws z
        ddim_steps: int = 50
        params: str = "auto"  # auto | xattn | noxattn | full | esd-u-2024
        esd_timing: str = "reference"  # reference | aligned

    paper = "Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023; rohitgandikota/erasing)"
    data_free = True
    status = "reference"
    task_kinds = frozenset({"concept"})
    concept_presets = merge_presets(
        {"smoke": {"iters": 10, "ddim_steps": 10}},
        per_task({"sd-digits": {"ddim_steps": 10}}),
        {"sd-digits:smoke": {"iters": 200}, "sd-digits:fast": {"iters": 200}},
    )

    def unlearn_concept(self, ctx):
        cfg = self.config
        unet = ctx.unet()
        frozen = ctx.unet(trainable=False)
        params = ctx.param_set(unet, ctx.prompts.esd_params if cfg.params == "auto" else cfg.params)
        opt = ctx.optimizer(params, lr=cfg.lr)
        e_c, e_0 = ctx.text(ctx.prompts.erase, 1), ctx.text("", 1)
        steps, T = cfg.ddim_steps, ctx.model.num_timesteps
        timesteps = ctx.ddim_timesteps(steps)
        for _ in ctx.steps(cfg.iters):
            k = int(torch.randint(0, steps, ()))
            if cfg.esd_timing == "reference":
                z = ctx.ddim_partial(unet, e_c, cfg.s_start, steps, stop_after=steps - 1 - max(k - 1, 0))
                lo, hi = round(T * k / steps), round(T * (k + 1) / steps)
                t = torch.randint(lo, max(hi, lo + 1), (1,), device=ctx.device)
            else:
                z = ctx.initial_latents(1) if k == 0 else ctx.ddim_partial(unet, e_c, cfg.s_start, steps, k - 1)
                t = timesteps[k].view(1).to(ctx.device)
            with torch.no_grad():
                e0, ep = ctx.eps(frozen, z, t, e_0), ctx.eps(frozen, z, t, e_c)
                target = e0 - cfg.eta * (ep - e0)
            loss = (ctx.eps(unet, z, t, e_c) - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ctx.log(loss=loss)
        return ctx.sampler(unet)
