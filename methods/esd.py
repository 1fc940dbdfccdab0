"""ESD: erasing a concept by negative guidance (Gandikota et al., ICCV 2023), on text-to-image models (ESD-x,
ESD-u) and on class-conditional DDPMs (the forget class plays the erase prompt, the null class the empty one)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.errors import BenchError
from bench.method import Method, merge_presets, per_task, register_method

TIMINGS = ("scaled", "reference", "aligned")


@register_method("esd")
class ESD(Method):
    """Data-free: the edited model's conditional prediction for the erase condition c learns the frozen
    model's negatively guided one, ε* = ε*(x,t,∅) − η (ε*(x,t,c) − ε*(x,t,∅)), on inputs x drawn by partial
    guided DDIM (``s_start``, SD's "s" form) with the edited model itself (Reference ``train-esd.py``).

    When to score the partial sample (``esd_timing``; docs/methods.md "ESD's timing"): for k ~ U{0..S−1} the
    reference runs S − max(k−1, 0) of S DDIM steps and scores at t ~ U[Tk/S, T(k+1)/S), 39–58 DDPM steps
    above the sample's noise level at its S = 50 (``reference``). That offset grows with 1/S (199–298 at
    S = 10), so by default (``scaled``) it is scaled by S / ``ref_steps``: the same draws, scored at
    level + (t − level)·S/50, identical to the reference at 50 steps. ``aligned`` scores exactly at the
    sample's level. ``params="auto"``: ESD-u (``noxattn``: nudity, objects, digits) or ESD-x (``xattn``:
    styles, celebrities); class tasks train every weight. Only the ``compvis`` variant is implemented."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-5
        eta: float = 1.0  # negative-guidance strength
        s_start: float = 3.0  # guidance ("s" form) of the partial DDIM that draws x
        ddim_steps: int = 50
        params: str = "auto"  # auto | xattn | noxattn | full | esd-u-2024
        esd_timing: str = "scaled"  # scaled | reference | aligned
        ref_steps: int = 50  # the step count the reference's timing offset belongs to

    paper = "Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023; rohitgandikota/erasing)"
    data_free = True
    status = "reference"
    task_kinds = frozenset({"class", "concept"})
    presets = merge_presets(
        {"fast": {"iters": 150, "lr": 1e-4, "ddim_steps": 25, "s_start": 1.5},
         "smoke": {"iters": 30, "lr": 1e-4, "ddim_steps": 10, "s_start": 1.5}},
        {"concept:smoke": {"iters": 10, "ddim_steps": 10}},
        per_task({"sd-digits": {"ddim_steps": 10, "lr": 2e-5}}),
        {"sd-digits:smoke": {"iters": 200}, "sd-digits:fast": {"iters": 200}},
    )

    def unlearn(self, ctx):
        cfg = self.config
        if cfg.esd_timing not in TIMINGS:
            raise BenchError(f"esd.esd_timing must be one of {', '.join(TIMINGS)}, not {cfg.esd_timing!r}")
        net = ctx.base_model()
        frozen = ctx.base_model(name="frozen", trainable=False)
        opt = ctx.optimizer(ctx.param_set(net, cfg.params, auto="esd"), lr=cfg.lr)
        c, c_null = ctx.cond("erase", 1), ctx.cond("null", 1)
        S, T, w = cfg.ddim_steps, ctx.T, cfg.s_start - 1.0
        levels = ctx.ddim_timesteps(S).tolist() + [0]  # the noise level of x after j DDIM steps
        for _ in ctx.steps(cfg.iters):
            k = int(torch.randint(0, S, ()))
            j = k if cfg.esd_timing == "aligned" else S - max(k - 1, 0)
            x = ctx.initial(1) if j == 0 else ctx.ddim_partial(net, c, w, S, stop_after=j - 1)
            t = score_timestep(cfg.esd_timing, k, levels[j], S, T, cfg.ref_steps)
            t = torch.full((1,), t, device=ctx.device, dtype=torch.long)
            with torch.no_grad():
                e0, ec = ctx.eps(frozen, x, t, c_null), ctx.eps(frozen, x, t, c)
                target = e0 - cfg.eta * (ec - e0)
            loss = (ctx.eps(net, x, t, c) - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ctx.log(loss=loss)
        return ctx.sampler(net)


def score_timestep(timing: str, k: int, level: int, steps: int, T: int, ref_steps: int = 50) -> int:
    """The DDPM timestep at which a sample at noise ``level`` (drawn for bin ``k``) is scored."""
    if timing == "aligned":
        return int(level)
    lo, hi = round(T * k / steps), round(T * (k + 1) / steps)
    t = int(torch.randint(lo, max(hi, lo + 1), ()))
    if timing == "scaled":
        t = level + round((t - level) * steps / ref_steps)
    return min(max(t, 0), T - 1)
