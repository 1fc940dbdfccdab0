"""``stl10-class``: STL-10 resized to 64 px, train and test pooled as the protocol does (protocol.md §1.3).

Data: ``stl10_binary/`` or ``stl10_binary.tar.gz`` (the four labelled files; the 2.7 GB unlabeled file
is not needed), or an image-folder tree. The 13,000 labelled images are pooled and split 12,000 / 1,000
with a seeded permutation (seed 1234, as the corrected classifier script does); the base model trains on
the 12,000 (the reference trains on all 13,000, leaving the classifier's test images inside the
diffusion data: a documented deviation so the classifier's test accuracy stays honest).
"""

from __future__ import annotations

from bench.datasets import CLASS_NAMES
from bench.models.refunet import STL10_CONFIG
from bench.tasks import SMOKE_METHOD_SIZES, ClassifierRecipe, Profile, Recipe
from bench.tasks.images import ImageTask

SMOKE_UNET = {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0,
              "resolution": 64, "in_channels": 3, "out_channels": 3, "norm_groups": 4}

PAPER_RECIPE = Recipe(steps=250_000, batch=128, lr=2e-4, optimizer="adam", clip=1.0, p_drop=0.1, ema=0.9999,
                      lr_schedule="constant")
FAST_RECIPE = Recipe(steps=30_000, batch=128, lr=2e-4, optimizer="adam", clip=1.0, p_drop=0.1, ema=0.9999,
                     lr_schedule="cosine")
SMOKE_RECIPE = Recipe(steps=20, batch=16, lr=2e-3, optimizer="adamw", clip=1.0, p_drop=0.1, ema=0.9,
                      lr_schedule="cosine")

STL10 = ImageTask(
    name="stl10-class",
    description="STL-10 at 64x64 (train+test pooled, 12,000 / 1,000), forget one class; reference U-Net",
    dataset_variant="stl10",
    class_names=CLASS_NAMES["stl10"],
    channels=3,
    image_size=64,
    unet_config=STL10_CONFIG,
    arch="reference-unet",
    classifier_arch={"kind": "timm", "model": "resnet18"},
    classifier_recipe=ClassifierRecipe(epochs=20, batch=128, lr=2e-3, weight_decay=5e-4, flip=True),
    weights_evaluated="ema",
    data_source="--data-root (stl10_binary/ or stl10_binary.tar.gz, or an image-folder tree), or the cache",
    dataset="stl10",
    resize=64,
    combine_split=(12_000, 1_000),
    profiles={
        "smoke": Profile("smoke", pretrain=SMOKE_RECIPE, sampler_steps=4, guidance=2.0, eta=0.0, n_ua=8,
                         n_per_class=2, n_probes=1, probe_n=4, unet_config=SMOKE_UNET,
                         classifier_arch={"kind": "small-cnn"}, classifier_epochs=2, max_per_class=10,
                         eval_batch=64, method_overrides=SMOKE_METHOD_SIZES,
                         description="tests only: 10 images per class, a tiny U-Net"),
        "fast": Profile("fast", pretrain=FAST_RECIPE, sampler_steps=100, guidance=2.0, eta=0.0, n_ua=500,
                        n_per_class=500, n_probes=4, probe_n=64, eval_batch=500,
                        description="GPU: 100-step DDIM, w=2, 500 samples per class"),
        "paper": Profile("paper", pretrain=PAPER_RECIPE, sampler_steps=1000, guidance=2.0, eta=1.0, n_ua=1300,
                         n_per_class=1300, n_probes=4, probe_n=64, eval_batch=500,
                         description="protocol: 1000-step generalized sampler (eta=1), w=2, EMA weights"),
    },
)
