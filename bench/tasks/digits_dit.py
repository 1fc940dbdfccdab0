"""``digits-dit``: the digits task with a class-conditional DiT (diffusers ``DiTTransformer2DModel``) as the
base model instead of a U-Net, so that the class methods can be compared on a transformer on this CPU.

The DiT sees the 8x8 digit as 16 patches of 2x2 pixels; four adaLN-Zero blocks of width 64 (two heads of 32).
Data, split, classifier and evaluation are the digits task's; the guidance weight and the pretraining
recipe were calibrated for the DiT by the same rule (Original UA <= 0.2, retained accuracy >= 0.8,
Retrain UA >= 0.8): see the profile descriptions and docs/dit.md.
"""

from __future__ import annotations

import dataclasses

from bench.tasks import Profile, Recipe
from bench.tasks.digits import DIGITS

DIT = dict(sample_size=8, patch_size=2, in_channels=1, out_channels=1, num_layers=4, num_attention_heads=2,
           attention_head_dim=32, norm_num_groups=32)
SMOKE_DIT = dict(DIT, num_layers=2)

FAST_RECIPE = Recipe(steps=3000, batch=128, lr=1e-3, optimizer="adamw", weight_decay=0.0, clip=1.0,
                     p_drop=0.1, ema=0.999, lr_schedule="cosine")
SMOKE_RECIPE = Recipe(steps=1200, batch=64, lr=2e-3, optimizer="adamw", clip=1.0, p_drop=0.1, ema=0.99,
                      lr_schedule="cosine")
GUIDANCE = 0.5

DIGITS_DIT = dataclasses.replace(
    DIGITS,
    name="digits-dit",
    description="sklearn 8x8 digits, forget one class, on a class-conditional DiT (diffusers DiTTransformer2DModel)",
    arch="dit",
    unet_config=DIT,
    profiles={
        "smoke": Profile("smoke", pretrain=SMOKE_RECIPE, sampler_steps=10, guidance=GUIDANCE, eta=0.0, n_ua=32,
                         n_per_class=16, n_probes=2, probe_n=16, unet_config=SMOKE_DIT,
                         method_overrides={"rl": {"iters": 40}, "salun": {"iters": 40}},
                         description="tests only: a one-block DiT trained for 60 steps"),
        "fast": Profile("fast", pretrain=FAST_RECIPE, sampler_steps=25, guidance=GUIDANCE, eta=0.0, n_ua=100,
                        n_per_class=100, n_probes=8, probe_n=32,
                        description="default: 25-step DDIM, 100 samples per class"),
    },
    notes={"guidance": f"w={GUIDANCE}, calibrated for the DiT (docs/dit.md)"},
)
