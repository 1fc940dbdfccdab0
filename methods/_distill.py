"""Score identity Distillation (SiD) / Score Forgetting Distillation (SFD) pieces shared by SFD and
PECKER (methods.md §10, §11).

Everything here is a plain function of networks and tensors, so the unit tests can pin each piece:

* :class:`OneStepMap` -- the one-step generator ``G(n, c) = b0 n / a0 - sigma0 eps(b0 n, t_init, c)``;
* :func:`x_hat` -- the Tweedie estimate of x0 from an epsilon network;
* :func:`sg_loss` -- the fake-score loss ``L_sg`` (epsilon-MSE, SUM over pixels, MEAN over the batch);
* :func:`g_loss` -- the SiD generator loss ``L_g`` with stop-gradient weight omega;
* :func:`clip_value_`, :func:`ema_update_`;
* :func:`fake_score_step` (the psi step of §10.4) and :func:`generator_terms` (the two L_g terms of
  the theta step), plus :class:`DistillState`, which holds the networks and optimizers.

No label dropout anywhere (p_drop = 0), as in the SFD configs (``cond_drop_prob: 0.0``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.models.diffusion import Diffusion, sfd_constants
from bench.sd.sampler import OneStepPromptSampler
from methods._sid_text import LatentSchedule, PromptConditions, load_generator

#: t range of the forget terms during the optional warm-up (methods.md §10.4)
WARMUP_T = (20, 980)


class OneStepMap:
    """``G_theta(n, c) = (b0 n)/a0 - sigma0 eps(theta; b0 n, t_init, c, 0)`` (methods.md §10.2).

    ``n ~ N(0, I)`` is pure noise scaled to the level ``t_init``; the output is the Tweedie x0
    estimate. Callable as ``fn(net, z, labels)``, the signature :meth:`UnlearnContext.one_step`
    expects.
    """

    def __init__(self, diffusion: Diffusion, t_init: int, eps: Callable | None = None) -> None:
        self.diffusion = diffusion
        self.t_init = int(t_init)
        self.a0, self.b0, self.sigma0 = sfd_constants(diffusion, self.t_init)
        self.eps = eps or diffusion.eps  # concept tasks: the unguided call (the score networks are guided)

    def __call__(self, net: nn.Module, z: Tensor, c: Tensor) -> Tensor:
        x = self.b0 * z
        t = torch.full((z.shape[0],), self.t_init, dtype=torch.long, device=z.device)
        return x / self.a0 - self.sigma0 * self.eps(net, x, t, c, 0.0)


def x_hat(diffusion: Diffusion, net: nn.Module, x_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
    """``(x_t - sqrt(1 - ab_t) eps(net; x_t, t, c, 0)) / sqrt(ab_t)`` (no clipping)."""
    return diffusion.x0_from_eps(x_t, t, diffusion.eps(net, x_t, t, c, 0.0))


def sg_loss(diffusion: Diffusion, psi: nn.Module, x0: Tensor, c: Tensor, t_min: int, t_max: int,
            t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """``L_sg(psi; x0, c) = mean_i sum_pix (eps_i - eps(psi; q(x0_i, t_i, eps_i), t_i, c_i, 0))^2`` with
    ``t_i ~ UniformInt[t_min, t_max)`` (NOT antithetic). ``x0`` is detached (generator samples)."""
    x0 = x0.detach()
    if t is None:
        t = diffusion.uniform_t(x0.shape[0], t_min, t_max)
    return diffusion.simple_loss(psi, x0, c, 0.0, t=t, noise=noise)


def g_loss(diffusion: Diffusion, teacher: nn.Module, fake: nn.Module, x0: Tensor, c_real: Tensor,
           c_fake: Tensor, alpha: float, t_min: int, t_max: int, t: Tensor | None = None,
           noise: Tensor | None = None) -> Tensor:
    """The SiD generator loss ``L_g(theta; x0, c_dagger, c_ddagger)`` (methods.md §10.3).

    ``A = x_hat(teacher; x_t, t, c_real)``, ``P = x_hat(fake; x_t, t, c_fake)``, ``Q = A - P``,
    ``omega_i = stopgrad(max(mean_pix |A_i - x0_i|, 1e-5))`` and
    ``l_i = sum_pix Q (P - x0) / omega_i`` if ``alpha == 1`` else
    ``sum_pix Q ((A - x0) - alpha Q) / omega_i`` (= [(1 - alpha)|Q|^2 + Q.(P - x0)] / omega_i);
    returns ``mean_i l_i``. ``x0`` keeps its graph: the gradient reaches the generator directly and
    through ``x_t`` into both score networks (their parameters should be frozen by the caller).
    """
    if t is None:
        t = diffusion.uniform_t(x0.shape[0], t_min, t_max)
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)
    a = x_hat(diffusion, teacher, x_t, t, c_real)
    p = x_hat(diffusion, fake, x_t, t, c_fake)
    omega = (a - x0).abs().flatten(1).mean(dim=1).clamp(min=1e-5).detach()
    omega = omega.view(-1, *([1] * (x0.ndim - 1)))
    q = a - p
    if alpha == 1:
        per_pix = q * (p - x0) / omega
    else:
        per_pix = q * ((a - x0) - alpha * q) / omega
    return per_pix.flatten(1).sum(dim=1).mean()


def clip_value_(params: Iterable[Tensor], value: float) -> None:
    """Element-wise clamp of every gradient to ``[-value, value]`` (``clip_grad_value_`` semantics)."""
    torch.nn.utils.clip_grad_value_([p for p in params if p.grad is not None], value)


@torch.no_grad()
def ema_update_(shadow: nn.Module, net: nn.Module, mu: float) -> None:
    """``shadow <- mu shadow + (1 - mu) net`` over parameters and floating buffers."""
    torch._foreach_lerp_(list(shadow.parameters()), [p.detach() for p in net.parameters()], 1.0 - mu)
    for s, b in zip(shadow.buffers(), net.buffers()):
        if s.dtype.is_floating_point:
            s.lerp_(b, 1.0 - mu)
        else:
            s.copy_(b)


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def override_labels(cfg, ctx, n: int) -> Tensor:
    """``c_o`` per sample: the context's cover class (default; every shipped SFD config fixes c_o),
    or with ``random_override`` a uniform draw from the remaining classes (the reference behaviour
    when c_o is unset: ``randint(0, 9)`` with c_f mapped to 9)."""
    if getattr(cfg, "random_override", False):
        k = ctx.num_classes - 1
        draw = torch.randint(0, k, (n,), device="cpu").to(ctx.device)
        return torch.where(draw == ctx.forget_class, torch.full_like(draw, k), draw)
    return ctx.labels(ctx.cover_class, n)


class LabelConditions:
    """Class-task conditioning: labels of random D_r batches (the images are never touched: data-free), the
    forget class, the override class (:func:`override_labels`); no label dropout (p_drop = 0)."""

    def __init__(self, ctx, cfg) -> None:
        self.ctx, self.cfg = ctx, cfg

    def remain(self) -> Iterator[Tensor]:
        return self.ctx.remain_labels(self.cfg.batch)

    def forget(self, n: int) -> Tensor:
        return self.ctx.labels(self.ctx.forget_class, n)

    def override(self, n: int) -> Tensor:
        return override_labels(self.cfg, self.ctx, n)

    @staticmethod
    def drop(c: Tensor) -> Tensor:
        return c


@dataclass
class DistillState:
    """The networks and optimizers of one SFD/PECKER run (all handed out by the context)."""

    teacher: nn.Module
    fake: nn.Module
    gen: nn.Module
    ema: nn.Module
    opt_fake: torch.optim.Optimizer
    opt_gen: torch.optim.Optimizer
    G: OneStepMap
    gen_r: nn.Module | None = None  # PECKER's two-copy variant: the retain copy theta_r
    sched: Diffusion | LatentSchedule | None = None  # the schedule the losses use (the task's)
    cond: LabelConditions | PromptConditions | None = None


def build_state(ctx, cfg, two_copy: bool = False) -> DistillState:
    """phi (frozen), psi and theta all from the pretrained EMA weights (§10.2); the generator EMA
    starts at theta's initial weights; both Adams with betas (beta1, beta2).

    With ``two_copy`` a second generator copy theta_r is cloned from theta and ONE Adam holds both
    copies' parameters (one counted optimizer step updates both; each tensor keeps its own moments).
    """
    sched, cond = schedule_and_conditions(ctx, cfg)
    teacher = ctx.base_model("ema", name="teacher", trainable=False)
    fake = ctx.base_model("ema", name="fake_score")
    gen = ctx.base_model("ema", name="generator")
    if ctx.kind == "concept" and ctx.one_step_generator:
        load_generator(gen, ctx.one_step_generator)
    ema = ctx.clone(gen, "generator_ema", trainable=False)
    gen_r = ctx.clone(gen, "generator_retain") if two_copy else None
    betas = (cfg.beta1, cfg.beta2)
    opt_fake = ctx.optimizer(fake.parameters(), lr=cfg.lr_psi, betas=betas)
    gen_params = list(gen.parameters()) + (list(gen_r.parameters()) if gen_r is not None else [])
    opt_gen = ctx.optimizer(gen_params, lr=cfg.lr_theta, betas=betas)
    G = OneStepMap(sched, cfg.t_init, getattr(sched, "generator_eps", None))
    return DistillState(teacher, fake, gen, ema, opt_fake, opt_gen, G, gen_r, sched, cond)


def schedule_and_conditions(ctx, cfg) -> tuple[Diffusion | LatentSchedule, LabelConditions | PromptConditions]:
    """Class tasks: the pixel DDPM and labels (no guidance: the class-task reference distils the unguided
    teacher). Concept tasks: the latent schedule with the score networks guided at ``cfg.guidance`` and
    prompt embeddings."""
    guidance = getattr(cfg, "guidance", 1.0)
    if ctx.kind != "concept":
        if guidance != 1.0:
            raise BenchError("guidance applies to concept tasks; the class-task SFD distils the unguided teacher "
                             "(leave guidance at 1)")
        return ctx.diffusion, LabelConditions(ctx, cfg)
    return LatentSchedule(ctx, guidance), PromptConditions(ctx, cfg.batch, guidance, seed=int(ctx.seed))


def output(ctx, st: DistillState):
    """What the cell evaluates: the EMA generator, one network call per image (decoded by the VAE on concept
    tasks)."""
    if ctx.kind == "concept":
        return OneStepPromptSampler.like(ctx.sampler(st.ema, weights="ema"), st.G.t_init)
    return ctx.one_step(st.ema, st.G, weights="ema")


def epsilon_mse(st: DistillState, net: nn.Module, x0: Tensor, c: Tensor) -> Tensor:
    """The unguided epsilon-MSE of ``net`` as a denoiser (PECKER's saliency loss): L_simple with antithetic t
    on class tasks, uniform t on concept tasks."""
    d = st.sched
    if isinstance(d, LatentSchedule):
        return d.simple_loss(net, x0, c, guided=False)
    return d.simple_loss(net, x0, c, 0.0, t=d.antithetic_t(len(x0)))


def forget_t_range(cfg, iteration: int) -> tuple[int, int]:
    """``[20, 980)`` during the first ``forget_warmup * iters`` iterations, else ``[t_min, t_max)``."""
    if iteration < cfg.forget_warmup * cfg.iters:
        return WARMUP_T
    return cfg.t_min, cfg.t_max


def fake_score_step(ctx, st: DistillState, cfg, c_r: Tensor, iteration: int) -> dict[str, Tensor]:
    """The psi step of §10.4: psi.train(); generator samples without gradient (theta keeps whatever
    mode it is in: train() in the very first iteration, eval() afterwards -- the reference artefact);
    ``L_psi = lambda_psi L_sg(psi; x_r, c_r) + mu_psi L_sg(psi; x_f, c_f)`` with fresh noise, t and
    epsilon per term; zero grads, backprop, clip by value, Adam."""
    d = st.sched
    st.fake.train()
    set_requires_grad(st.fake, True)
    n = len(c_r)
    c_r = st.cond.drop(c_r)  # the reference drops captions before the generator samples, not after
    with torch.no_grad():
        x_r = st.G(st.gen, torch.randn(n, *ctx.image_shape, device=ctx.device), c_r)
    loss_r = sg_loss(d, st.fake, x_r, c_r, cfg.t_min, cfg.t_max)
    loss = cfg.lambda_psi * loss_r
    out = {"loss_sg_r": loss_r}
    if cfg.mu_psi:
        c_f = st.cond.drop(st.cond.forget(n))
        with torch.no_grad():
            x_f = st.G(st.gen, torch.randn(n, *ctx.image_shape, device=ctx.device), c_f)
        lo, hi = forget_t_range(cfg, iteration)
        loss_f = sg_loss(d, st.fake, x_f, c_f, lo, hi)
        loss = loss + cfg.mu_psi * loss_f
        out["loss_sg_f"] = loss_f
    st.opt_fake.zero_grad(set_to_none=True)
    loss.backward()
    clip_value_(st.fake.parameters(), cfg.clip_value)
    st.opt_fake.step()
    return out


def generator_terms(ctx, st: DistillState, cfg, c_r: Tensor, iteration: int, gen: nn.Module | None = None,
                    forget_gen: nn.Module | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The two L_g terms of the theta step (§10.4), each already multiplied by its weight:
    ``lambda_theta L_g(G(n3, c_r), c_r, c_r)`` and ``mu_theta L_g(G(n4, c_f), c_o, c_f)`` (None when
    ``mu_theta == 0``), plus the forget samples ``x_f`` (with graph) for PECKER's saliency.

    The caller sets the modes (psi.eval() with frozen parameters, theta.train()). ``gen`` and
    ``forget_gen`` default to ``st.gen`` (PECKER's two-copy variant passes two different copies).
    """
    d = st.sched
    gen = st.gen if gen is None else gen
    forget_gen = gen if forget_gen is None else forget_gen
    n = len(c_r)
    x_r = st.G(gen, torch.randn(n, *ctx.image_shape, device=ctx.device), c_r)
    l_d = cfg.lambda_theta * g_loss(d, st.teacher, st.fake, x_r, c_r, c_r, cfg.alpha, cfg.t_min, cfg.t_max)
    if not cfg.mu_theta:
        return l_d, None, None
    c_f = st.cond.forget(n)
    c_o = st.cond.override(n)
    x_f = st.G(forget_gen, torch.randn(n, *ctx.image_shape, device=ctx.device), c_f)
    lo, hi = forget_t_range(cfg, iteration)
    l_f = cfg.mu_theta * g_loss(d, st.teacher, st.fake, x_f, c_o, c_f, cfg.alpha, lo, hi)
    return l_d, l_f, x_f


def begin_generator_step(st: DistillState) -> None:
    """Modes of the theta step: psi.eval() with its parameters frozen, theta.train()."""
    st.fake.eval()
    set_requires_grad(st.fake, False)
    for g in (st.gen, st.gen_r):
        if g is not None:
            g.train()


def end_generator_step(st: DistillState, cfg) -> None:
    """theta.eval(); EMA update."""
    for g in (st.gen, st.gen_r):
        if g is not None:
            g.eval()
    ema_update_(st.ema, st.gen, cfg.ema)


#: concept tasks: the SD recipe of the reference's run script (SD v1.5; docs/methods.md, "SFD and PECKER on concept
#: tasks"): 12,500 iterations = 100 kimg at batch 8
CONCEPT_PRESETS = {
    "concept": {"iters": 12_500, "batch": 8, "lr_psi": 3e-6, "lr_theta": 1e-6, "alpha": 1.0, "t_min": 20,
                "t_max": 980, "t_init": 625, "lambda_psi": 1.0, "mu_psi": 1.0, "lambda_theta": 1.0,
                "mu_theta": 1.0, "ema": 0.0, "guidance": 4.5},
    "concept:smoke": {"iters": 4},
    # sd-digits (CPU calibration, docs/methods.md): the class tasks' fast learning rate on a 16-px micro model
    **{f"sd-digits:{p}": {"iters": 200, "batch": 16, "lr_psi": 3e-4, "lr_theta": 3e-4} for p in ("fast", "paper")},
    "sd-digits:smoke": {"iters": 100, "batch": 16, "lr_psi": 3e-4, "lr_theta": 3e-4},
}
