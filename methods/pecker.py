"""PECKER: SFD plus a per-iteration weight-saliency mask on the forgetting update (Ma et al.,
arXiv 2604.05634v1; methods.md §11). Paper only, no code released: the details are reconstructions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.method import Method, register_method
from bench.models.generators import eval_mode
from methods import _distill as D
from methods._masks import float_masks, mask_fraction, take_grads, top_fraction
from methods.sfd import SFD


@register_method("pecker")
class PECKER(Method):
    """SFD (one-step SiD distillation with the forget class pulled onto the teacher's override class c_o)
    plus a SalUn-style weight-saliency mask rebuilt every iteration: m = global top-50% of |grad of the
    generator's epsilon-MSE (as an epsilon-predictor, eval(), no CFG) on stop-grad generated forget
    samples|, applied only to the forgetting part of the generator gradient, g = g_d + m * g_fg; retain
    distillation updates all weights. All four loss weights 1.0, lr 1e-5, xi = alpha = 1.2; data-free; the
    EMA generator is evaluated with 1 NFE. Paper only (no code): every detail beyond the paper's equations
    is a reconstruction (``mask_scope``, ``saliency_data``, ``two_copy``): docs/methods.md ("pecker")."""

    @dataclass(frozen=True)
    class Config(SFD.Config):
        # the paper's loss weights (§5.1); everything else as SFD's reference defaults
        mu_psi: float = 1.0
        mu_theta: float = 1.0
        mask_ratio: float = 0.5
        mask_refresh_every: int = 1
        mask_scope: str = "forget_only"
        saliency_data: str = "generated"
        two_copy: bool = False
        two_copy_merge: str = "add"

    paper = ("Ma et al., PECKER: saliency-masked score forgetting distillation for diffusion models, "
             "arXiv 2604.05634v1 (paper only, no code)")
    data_free = True
    output = "one-step"
    status = "paper"
    steps_per_iter = 2
    task_kinds = frozenset({"class", "concept"})
    presets = {
        **D.CONCEPT_PRESETS,
        "fast": SFD.presets["fast"],  # the same budget as SFD, so the two are compared like for like
        "smoke": {"iters": 20, "batch": 32, "lr_psi": 3e-4, "lr_theta": 3e-4, "ema": 0.8},
    }

    def _check(self) -> None:
        cfg = self.config
        if cfg.mask_scope not in ("forget_only", "all"):
            raise ValueError(f"pecker.mask_scope must be 'forget_only' or 'all', got {cfg.mask_scope!r}")
        if cfg.saliency_data not in ("generated", "real"):
            raise ValueError(f"pecker.saliency_data must be 'generated' or 'real', got {cfg.saliency_data!r}")
        if cfg.two_copy_merge not in ("add", "partition"):
            raise ValueError(f"pecker.two_copy_merge must be 'add' or 'partition', "
                             f"got {cfg.two_copy_merge!r}")
        if cfg.mask_refresh_every < 1:
            raise ValueError("pecker.mask_refresh_every must be >= 1")
        if cfg.two_copy and cfg.mask_scope != "forget_only":
            raise ValueError("pecker.two_copy implies mask_scope='forget_only'")

    def unlearn(self, ctx):
        self._check()
        cfg = self.config
        st = D.build_state(ctx, cfg, two_copy=cfg.two_copy)
        labels = st.cond.remain()
        real = ctx.forget_batches(cfg.batch) if cfg.saliency_data == "real" else None
        mask = None
        for i in ctx.steps(cfg.iters, probe=lambda: D.output(ctx, st)):
            c_r = next(labels)
            logs = D.fake_score_step(ctx, st, cfg, c_r, i)
            D.begin_generator_step(st)
            retain_gen = st.gen_r if cfg.two_copy else st.gen
            l_d, l_f, x_f = D.generator_terms(ctx, st, cfg, c_r, i, gen=retain_gen, forget_gen=st.gen)
            st.opt_gen.zero_grad(set_to_none=True)
            l_d.backward()
            g_d = take_grads(retain_gen)
            st.gen.zero_grad(set_to_none=True)
            g_fg = None
            if l_f is not None:
                l_f.backward()
                g_fg = take_grads(st.gen)
            if mask is None or i % cfg.mask_refresh_every == 0:
                saliency = saliency_mask(ctx, st, cfg, x_f, real, len(c_r))
                logs["mask_fraction"] = mask_fraction(saliency)
                mask = float_masks(saliency, st.gen)
            if cfg.two_copy:
                self._two_copy_update(st, cfg, g_d, g_fg, mask)
            else:
                self._single_update(st, cfg, g_d, g_fg, mask)
            D.end_generator_step(st, cfg)
            ctx.log(**logs, loss_g_r=l_d, **({"loss_g_f": l_f} if l_f is not None else {}))
        return D.output(ctx, st)

    @staticmethod
    def _single_update(st, cfg, g_d, g_fg, mask) -> None:
        """g = g_d + m * g_fg (forget_only) or m * (g_d + g_fg) (all); clip by value; Adam."""
        _set_grads(st.gen, combine_grads(g_d, g_fg, mask, cfg.mask_scope))
        D.clip_value_(st.gen.parameters(), cfg.clip_value)
        st.opt_gen.step()

    @staticmethod
    def _two_copy_update(st, cfg, g_d, g_fg, mask) -> None:
        """theta_r <- Adam(g_d), theta_u <- Adam(m * g_fg) in one step; merge into theta_u; re-sync."""
        pu, pr = list(st.gen.parameters()), list(st.gen_r.parameters())
        with torch.no_grad():
            start = torch._foreach_mul(pu, 1.0)
        _set_grads(st.gen_r, g_d)
        _set_grads(st.gen, torch._foreach_mul(g_fg, mask) if g_fg is not None else torch._foreach_mul(pu, 0.0))
        D.clip_value_(pr + pu, cfg.clip_value)
        st.opt_gen.step()
        with torch.no_grad():
            if cfg.two_copy_merge == "add":  # theta_r' + m * (theta_u' - theta)
                merged = torch._foreach_sub(pu, start)
                torch._foreach_mul_(merged, mask)
                torch._foreach_add_(merged, pr)
            else:  # m * theta_u' + (1 - m) * theta_r', exact for a 0/1 mask
                keep_r = torch._foreach_mul(mask, -1.0)
                torch._foreach_add_(keep_r, 1.0)
                merged = torch._foreach_mul(pu, mask)
                torch._foreach_add_(merged, torch._foreach_mul(pr, keep_r))
            torch._foreach_copy_(pu, merged)
            torch._foreach_copy_(pr, merged)


def combine_grads(g_d: list[Tensor], g_fg: list[Tensor] | None, mask: list[Tensor], scope: str) -> list[Tensor]:
    """PECKER's generator gradient per parameter: ``g_d + m * g_fg`` (``forget_only``) or
    ``m * (g_d + g_fg)`` (``all``), in fused multi-tensor operations (no loop over parameters).
    ``g_fg`` None (mu_theta = 0) counts as zero."""
    if scope == "forget_only":
        if g_fg is None:
            return g_d
        out = torch._foreach_mul(g_fg, mask)
        torch._foreach_add_(out, g_d)
        return out
    out = torch._foreach_add(g_d, g_fg) if g_fg is not None else list(g_d)
    return torch._foreach_mul(out, mask)


def _set_grads(net, grads: list[Tensor]) -> None:
    for p, g in zip(net.parameters(), grads):
        p.grad = g


def saliency_mask(ctx, st, cfg, x_f, real, n: int) -> dict[str, torch.Tensor]:
    """``top_fraction(|grad_theta L_mse|, rho)`` with the generator (theta_u) used as an epsilon-predictor
    in eval() mode, no CFG, on stop-grad forget samples; ``.grad`` is not touched (autograd.grad)."""
    net = st.gen
    if real is not None:
        x_s = next(real)[0]
    elif x_f is not None:
        x_s = x_f.detach()
    else:
        z = torch.randn(n, *ctx.image_shape, device=ctx.device)
        with torch.no_grad():
            x_s = st.G(net, z, st.cond.forget(n))
    c_f = st.cond.forget(len(x_s))
    names, params = zip(*[(k, p) for k, p in net.named_parameters()])
    with eval_mode(net):
        loss = D.epsilon_mse(st, net, x_s, c_f)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = torch._foreach_abs([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
    return top_fraction(dict(zip(names, grads)), cfg.mask_ratio)
