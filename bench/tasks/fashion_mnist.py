"""``fashion-mnist-class``: Fashion-MNIST (28 px grayscale), the real task that runs end to end on a CPU.

Data: Debian's ``dataset-fashion-mnist`` package, the IDX files anywhere under ``--data-root``, an
image-folder tree, or the harness cache. The base model is the reference U-Net topology scaled down as
protocol.md §9 suggests (one residual block per level, widths 16-32-64, attention at 7x7); the UA
classifier is a narrow timm ResNet (one basic block per stage, widths 16-128) with the small-image stem.

Calibration (``bench pretrain --task fashion-mnist-class --guidance-sweep 0.5,1,2``, 40 images per class,
10-step DDIM): at w = 0.5 the base model's samples of the remaining classes are recognised 0.775 of the
time (raw weights), at w = 1 0.836, at w = 2 0.900, with the forget class's UA 0.15, 0.075 and 0.05. The
harness's rule (UA <= 0.2, retained accuracy >= 0.8) holds from w = 1, so the profiles use the papers'
w = 2, unlike digits-class, whose tiny model breaks at w = 2.
"""

from __future__ import annotations

from bench.datasets import CLASS_NAMES
from bench.tasks import SMOKE_METHOD_SIZES, ClassifierRecipe, Profile, Recipe
from bench.tasks.images import ImageTask

UNET = {"ch": 16, "ch_mult": [1, 2, 4], "num_res_blocks": 1, "attn_resolutions": [7], "dropout": 0.1,
        "resolution": 28, "in_channels": 1, "out_channels": 1, "norm_groups": 8}
SMOKE_UNET = {"ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
              "resolution": 28, "in_channels": 1, "out_channels": 1, "norm_groups": 4}
CLASSIFIER = {"kind": "timm", "model": "resnet18", "layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]}

FAST_RECIPE = Recipe(steps=1500, batch=128, lr=1e-3, optimizer="adamw", clip=1.0, p_drop=0.1, ema=0.999,
                     lr_schedule="cosine")
SMOKE_RECIPE = Recipe(steps=40, batch=16, lr=2e-3, optimizer="adamw", clip=1.0, p_drop=0.1, ema=0.99,
                      lr_schedule="cosine")
PAPER_RECIPE = Recipe(steps=6000, batch=128, lr=1e-3, optimizer="adamw", clip=1.0, p_drop=0.1, ema=0.9995,
                      lr_schedule="cosine")

FASHION_MNIST = ImageTask(
    name="fashion-mnist-class",
    description="Fashion-MNIST 28x28 grayscale, forget one class (60,000 train / 10,000 test)",
    dataset_variant="fashion-mnist",
    class_names=CLASS_NAMES["fashion-mnist"],
    channels=1,
    image_size=28,
    unet_config=UNET,
    arch="reference-unet",
    classifier_arch=CLASSIFIER,
    classifier_recipe=ClassifierRecipe(epochs=4, batch=128, lr=3e-3, weight_decay=5e-4, flip=True),
    data_source="--data-root (IDX files or image folders), Debian's dataset-fashion-mnist, or the cache",
    dataset="fashion-mnist",
    profiles={
        "smoke": Profile("smoke", pretrain=SMOKE_RECIPE, sampler_steps=4, guidance=2.0, eta=0.0, n_ua=8,
                         n_per_class=2, n_probes=1, probe_n=4, unet_config=SMOKE_UNET,
                         classifier_arch={"kind": "small-cnn"}, classifier_epochs=3, max_per_class=20,
                         eval_batch=256,
                         method_overrides=SMOKE_METHOD_SIZES,
                         description="tests only: 20 images per class, a 2-level U-Net, the small CNN"),
        "fast": Profile("fast", pretrain=FAST_RECIPE, sampler_steps=10, guidance=2.0, eta=0.0, n_ua=100,
                        n_per_class=30, n_probes=2, probe_n=16, eval_batch=500, fid_ref_per_class=1000,
                        description="CPU default: 10-step DDIM, w=2, 100 forget / 30 per remaining class"),
        "paper": Profile("paper", pretrain=PAPER_RECIPE, sampler_steps=1000, guidance=2.0, eta=1.0, n_ua=500,
                         n_per_class=500, n_probes=10, probe_n=64, eval_batch=1000,
                         description="reference sampler (1000 steps, eta=1), 500 samples per class"),
    },
    notes={"guidance": "w=2 (the papers' value), calibrated: results/fashion-mnist-class/guidance_sweep.md"},
)
