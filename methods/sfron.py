"""SFR-on: saliency forgetting in the remain-preserving manifold, online (methods.md §8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from bench.method import Method, register_method
from bench.models.diffusion import Diffusion
from methods._fisher import fisher_ratio_mask, guided_fisher
from methods._masks import apply_mask, clip_norm_, mask_fraction


def adaptive_weights(losses: Tensor, lambd: float) -> Tensor:
    """``w_i = v_i / sum_j v_j`` with ``v_i = 1 / (stopgrad(l_i)^lambda + 1e-8)``: smaller loss,
    larger weight; sums to one; no gradient flows through the weights."""
    v = 1.0 / (losses.detach().clamp_min(0).pow(lambd) + 1e-8)
    return v / v.sum()


def cosine_alpha(alpha: float, step: int, total: int, decay: bool = True) -> float:
    """``alpha * (1 + cos(pi * step / total)) / 2`` (``--decay_forget_alpha``), else ``alpha``."""
    if not decay or total <= 0:
        return alpha
    return alpha * (1.0 + math.cos(math.pi * step / total)) / 2.0


def forget_grad_(net: nn.Module, diffusion: Diffusion, x: Tensor, c: Tensor, mask: dict[str, Tensor] | None,
                 a_f: float, lambd: float, p_drop: float, clip: float, t: Tensor | None = None,
                 noise: Tensor | None = None) -> Tensor:
    """The fast sub-step's gradient, left in ``.grad``: backprop ``-a_f * sum_i w_i l_i`` (weighted
    ascent), then 1) MASK, then 2) clip_norm (the reference order, opposite to SalUn's).
    Returns the adaptive loss ``sum_i w_i l_i`` (detached)."""
    losses = diffusion.per_sample_loss(net, x, c, p_drop=p_drop, t=t, noise=noise)
    loss_ada = (adaptive_weights(losses, lambd) * losses).sum()
    net.zero_grad(set_to_none=True)
    (-a_f * loss_ada).backward()
    if mask is not None:
        apply_mask(net, mask)
    clip_norm_(net.parameters(), clip)
    return loss_ada.detach()


@register_method("sfron")
class SFRon(Method):
    """SFR-on (reference: K1nght/Unified-Unlearning-w-Remain-Geometry, ``sfron_forget``, ``--method ron
    --unlearn_loss adaga``). Stage A: Fisher diagonals of the w=2 guided loss over one pass each of D_f
    and D_r (eval mode, per-batch clip_norm 1, F += grad^2/n_batches); mask = (F_f+1e-15)/(F_r+1e-15)
    >= gamma (1.0), its fraction logged as ``mask_fraction``. Stage B, per iteration, TWO steps of ONE
    shared Adam: a fast masked, adaptively weighted (w_i ~ 1/l_i^lambda) gradient ascent on a forget
    batch scaled by the cosine-decayed alpha_f (mask, THEN clip), and a slow unmasked alpha_r * L_simple
    descent on a remain batch (clip); label dropout 0.1 in both. Raw weights are evaluated.

    Deviations and choices:

    * EMA: the reference keeps an EMA with mu = 1e-4 (shadow = 1e-4*shadow + (1-1e-4)*theta), which is
      the current weights up to 1e-4; it evaluates raw weights anyway. No EMA is kept here.
    * 150 vs 50 steps (spec §8.4): ``iters`` = 150 is the config's length; the abstract claims 50.
      ``checkpoint_iter`` = 50 evaluates the weights after 50 iterations of the SAME 150-iteration
      cosine schedule (the reference's iteration-50 checkpoint); the run then does 50 x 2 optimizer
      steps (``expected_steps`` follows). The probe curve (UA vs steps) of the full run also shows
      when forgetting happens. Report both rows, labelled.
    * Data streams are the harness's (fresh shuffles, no flips: the digits task has none).
    * Masked-out weights still move in the fast sub-step through the shared Adam moments (a property
      of the reference, kept).
    * Budget on digits-class: ``fast`` runs 150 iterations (the reference length; SalUn fast also runs
      150, so steps-to-forget compare directly; 300 optimizer steps); ``smoke`` 30 iterations at
      lr 3e-4 (calibration with the earlier 800-step base model: at lr 1e-4 the forget class survives
      20 iterations: UA 0.00-0.06 on seeds 0-2, since
      forgetting sets in only after ~40 iterations; 30 at 3e-4 gave UA 1.0, 1.0, 0.53).
      The cosine decay runs over the budget actually given (``iters``), as the reference.
    """

    @dataclass(frozen=True)
    class Config:
        iters: int = 150
        lr: float = 1e-4
        batch: int = 128
        alpha_f: float = 10.0
        alpha_r: float = 1.0
        decay_forget_alpha: bool = True
        lambd: float = 0.5
        gamma: float = 1.0
        fisher_guidance: float = 2.0
        fisher_batch: int = 128
        clip: float = 1.0
        p_drop: float = 0.1
        checkpoint_iter: int = 0  # 0: evaluate after ``iters``; k > 0: stop after k of the ``iters`` schedule

    paper = ("Huang et al., Unified Gradient-Based Machine Unlearning with Remain Geometry Enhancement "
             "(SFR-on), NeurIPS 2024, arXiv 2409.19732")
    data_free = False
    status = "reference"
    steps_per_iter = 2
    presets = {"fast": {"iters": 150}, "smoke": {"iters": 30, "lr": 3e-4}}

    def run_iters(self) -> int:
        cfg = self.config
        if cfg.checkpoint_iter and cfg.checkpoint_iter > 0:
            return min(int(cfg.checkpoint_iter), int(cfg.iters))
        return int(cfg.iters)

    def expected_steps(self) -> int:
        return self.run_iters() * self.steps_per_iter

    def unlearn(self, ctx):
        cfg, d = self.config, ctx.diffusion
        net = ctx.base_model("raw")
        # --- stage A: Fisher diagonals and the ratio mask (setup) ---
        xf, yf = ctx.forget_data()
        xr, yr = ctx.remain_data()
        fisher_f = guided_fisher(net, ctx, xf, yf, cfg.fisher_guidance, cfg.fisher_batch, cfg.clip)
        fisher_r = guided_fisher(net, ctx, xr, yr, cfg.fisher_guidance, cfg.fisher_batch, cfg.clip)
        mask = fisher_ratio_mask(fisher_f, fisher_r, cfg.gamma)
        del fisher_f, fisher_r
        ctx.log(mask_fraction=mask_fraction(mask))
        # --- stage B: the online fast-slow loop with ONE shared Adam ---
        net.train()
        opt = ctx.optimizer(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        forget, remain = ctx.forget_batches(cfg.batch), ctx.remain_batches(cfg.batch)
        for s in ctx.steps(self.run_iters()):
            a_f = cosine_alpha(cfg.alpha_f, s, cfg.iters, cfg.decay_forget_alpha)
            x_f, c_f = next(forget)
            loss_f = forget_grad_(net, d, x_f, c_f, mask, a_f, cfg.lambd, cfg.p_drop, cfg.clip)
            opt.step()
            x_r, c_r = next(remain)
            loss_r = d.simple_loss(net, x_r, c_r, p_drop=cfg.p_drop)
            opt.zero_grad(set_to_none=True)
            (cfg.alpha_r * loss_r).backward()
            clip_norm_(net.parameters(), cfg.clip)
            opt.step()
            ctx.log(loss_f=loss_f, loss_r=loss_r, alpha_f=a_f)
        return ctx.sampler(net, weights="raw")
