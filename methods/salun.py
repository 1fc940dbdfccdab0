"""SalUn: saliency unlearning (Fan et al., ICLR 2024; methods.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import merge_presets, register_method
from methods._masks import mask_fraction
from methods._relabel import relabel_loop
from methods._saliency import salun_mask
from methods.rl import RandomLabel


@register_method("salun")
class SalUn(RandomLabel):
    """Stage A: mask = global top ``mask_ratio`` of |sum over one pass of D_f of per-batch clipped gradients
    of the ``mask_guidance``-guided forget loss| (eval mode). Stage B: the RL loop with clip-then-mask, so
    masked-out weights never leave the pretrained values.

    Class tasks: w = 2, clip 1.0 (reference lr 1e-4; the SFR-on re-run used 1e-5). Concept tasks: the SD
    reference's w = 7.5 (s = 8.5), no clipping, then the RL-SD loop."""

    @dataclass(frozen=True)
    class Config(RandomLabel.Config):
        mask_ratio: float = 0.5
        mask_guidance: float = 2.0  # w of the "(1+w)" form
        mask_clip: float = 1.0  # per-batch gradient clipping in the mask pass (0: none)
        mask_images: int = 0  # images of D_f in the mask pass (0: all)

    paper = "Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency, ICLR 2024"
    presets = merge_presets(RandomLabel.presets, {"concept": {"mask_guidance": 7.5, "mask_clip": 0.0}})

    def unlearn(self, ctx):
        cfg = self.config
        net = ctx.base_model()
        mask = salun_mask(ctx, net, cfg.mask_ratio, cfg.mask_guidance, cfg.batch, cfg.mask_clip, cfg.mask_images)
        ctx.log(mask_fraction=mask_fraction(mask))
        net = relabel_loop(ctx, net, cfg, mask)
        return ctx.sampler(net)
