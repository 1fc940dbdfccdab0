"""SFD: Score Forgetting Distillation (Chen, Zhang & Zhou, ICLR 2025; methods.md §10)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from methods import _distill as D


@register_method("sfd")
class SFD(Method):
    """Data-free distillation of the pretrained DDPM into a one-step generator (SiD) whose forget-class
    distribution is pulled onto the teacher's override class c_o = (c_f+1) mod 10. Teacher phi
    (frozen), fake score psi and generator theta all start from the EMA weights; per iteration one psi
    step (L_sg on generator samples of remaining-class labels + mu_psi x forget term) and one theta
    step (SiD L_g on c_r + mu_theta x L_g with the teacher at c_o and psi at c_f), clip by value 1.0,
    Adam betas (0, 0.999), no label dropout; the EMA generator is evaluated with 1 NFE, w = 0.

    Spec choices and deviations (the spec is silent or the harness decided):

    * Override class: the harness cover class (c_f+1) mod 10, which equals every shipped config's
      0 -> 1; ``random_override`` draws c_o uniformly from the remaining classes per sample (the
      reference behaviour when c_o is unset).
    * Train/eval modes follow §10.4, including the reference artefact that theta is still in train()
      during the first psi step (the digits U-Net has no dropout, so modes change nothing there).
    * The generator EMA is a plain ``mu`` EMA from theta's initial weights (no warm-up schedule).
    * Generator noise, t and epsilon are fresh draws from the global (seeded) RNG per term.
    * Only SFD proper is implemented; the two-stage variant (§10.6, SiD stage 1 then SFD from its
      checkpoint) is not offered.
    * Remaining-class labels come from a shuffled, cycled stream over D_r's labels (the last partial
      batch of each epoch is kept, as with the reference loaders), so B varies at epoch ends.

    Presets (digits-class, CPU; the ``paper`` profile keeps the CIFAR-10 reference defaults below):

    * ``fast``: 100 iterations, batch 32, lr 3e-4 (psi and theta), Adam (0, 0.999), EMA 0.95, the
      reference forget weights mu_psi = mu_theta = 0.01. The reference 50k iterations at lr 1e-5 would
      take hours on a CPU. 30x the lr moves the one-step generator within tens of iterations. The EMA
      decay is scaled so its horizon (~20 iterations) stays a small fraction of the run. Batch 32 keeps
      one iteration at ~0.24 CPU-s (single thread), so the 100 iterations take ~24 s unloaded. In
      calibration runs (with the earlier 800-step constant-rate base model) with these settings the
      reference weight 0.01 forgets, so it is kept: probe UA >= 0.9 after 72 iterations; final UA 1.0,
      retain acc 0.96-0.97 (the Original's is ~0.97), classifier-feature FID
      0.21-0.24 (seeds 0, 1). Weights of 0.1 or 1.0 forget after ~24 iterations, and 1.0 costs FID
      (0.31 vs 0.21 at seed 0). Budget, lr, batch and EMA are identical to PECKER's
      fast preset. The loss weights are each method's own (SFD 0.01, PECKER 1.0, as in the papers), so
      SFD vs PECKER compares the two published recipes, not the mask alone.
    * ``smoke``: 20 iterations, same lr/batch, EMA 0.8 and forget weights 1.0. The reference 0.01
      needs ~75 iterations to act, which is too long for a smoke run. With 1.0 the probe UA is already
      1.0 after 15 iterations (seeds 0-2).
    """

    @dataclass(frozen=True)
    class Config:
        iters: int = 50_000
        batch: int = 128
        lr_psi: float = 1e-5
        lr_theta: float = 1e-5
        beta1: float = 0.0
        beta2: float = 0.999
        alpha: float = 1.2
        t_min: int = 38
        t_init: int = 440
        t_max: int = 712
        lambda_psi: float = 1.0
        mu_psi: float = 0.01
        lambda_theta: float = 1.0
        mu_theta: float = 0.01
        ema: float = 0.9999
        clip_value: float = 1.0
        forget_warmup: float = 0.0
        random_override: bool = False
        guidance: float = 1.0  # concept tasks: CFG scale (s form) of the teacher and fake score; 1 = none

    paper = ("Chen, Zhang & Zhou, Score Forgetting Distillation: A Swift, Data-Free Method for Machine "
             "Unlearning in Diffusion Models, ICLR 2025 (arXiv 2409.11219)")
    data_free = True
    output = "one-step"
    status = "reference"
    steps_per_iter = 2
    task_kinds = frozenset({"class", "concept"})
    presets = {
        **D.CONCEPT_PRESETS,
        "fast": {"iters": 100, "batch": 32, "lr_psi": 3e-4, "lr_theta": 3e-4, "ema": 0.95},
        "smoke": {"iters": 20, "batch": 32, "lr_psi": 3e-4, "lr_theta": 3e-4, "ema": 0.8,
                  "mu_psi": 1.0, "mu_theta": 1.0},
    }

    def unlearn(self, ctx):
        cfg = self.config
        st = D.build_state(ctx, cfg)
        labels = st.cond.remain()
        for i in ctx.steps(cfg.iters, probe=lambda: D.output(ctx, st)):
            c_r = next(labels)
            logs = D.fake_score_step(ctx, st, cfg, c_r, i)
            D.begin_generator_step(st)
            l_d, l_f, _ = D.generator_terms(ctx, st, cfg, c_r, i)
            loss = l_d if l_f is None else l_d + l_f
            st.opt_gen.zero_grad(set_to_none=True)
            loss.backward()
            D.clip_value_(st.gen.parameters(), cfg.clip_value)
            st.opt_gen.step()
            D.end_generator_step(st, cfg)
            ctx.log(**logs, loss_g_r=l_d, **({"loss_g_f": l_f} if l_f is not None else {}))
        return D.output(ctx, st)
