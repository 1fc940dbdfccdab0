"""SalUn: saliency unlearning (Fan et al., ICLR 2024; methods.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import register_method
from methods._masks import mask_fraction
from methods._relabel import relabel_loop
from methods._saliency import salun_mask
from methods._sd import SaliencyConfig, saliency_mask
from methods._sd import relabel_loop as relabel_loop_sd
from methods.rl import CONCEPT_PRESETS, RandomLabel


@register_method("salun")
class SalUn(RandomLabel):
    """Stage A: mask = global top-50% of |sum over one pass of D_f of per-batch clipped gradients of
    the w=2 guided forget loss| (eval mode). Stage B: the RL loop with clip-then-mask, so masked-out
    weights never leave the pretrained values. Reference lr 1e-4 (the SFR-on re-run used 1e-5)."""

    @dataclass(frozen=True)
    class Config(RandomLabel.Config):
        mask_ratio: float = 0.5
        mask_guidance: float = 2.0

    paper = "Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency, ICLR 2024"
    data_free = False
    status = "reference"
    presets = {"fast": {"iters": 150}, "smoke": {"iters": 20}}
    ConceptConfig = SaliencyConfig
    concept_presets = CONCEPT_PRESETS

    def unlearn_concept(self, ctx):
        """SalUn-SD: stage A masks the largest 50% of |Σ ∇(−mean((ε − ê)²))| over one pass of D_f (ê guided
        with w = 7.5, "(1+w)" form), stage B is the RL-SD loop with the mask on the gradients."""
        mask = saliency_mask(ctx, self.config)
        return relabel_loop_sd(ctx, self.config, mask)

    def unlearn(self, ctx):
        cfg = self.config
        net = ctx.base_model("raw")
        mask = salun_mask(ctx, net, cfg.mask_ratio, cfg.mask_guidance, cfg.batch)
        ctx.log(mask_fraction=mask_fraction(mask))
        net = relabel_loop(ctx, net, cfg, mask)
        return ctx.sampler(net, weights="raw")
