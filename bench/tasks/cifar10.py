"""``cifar10-class``: CIFAR-10 at 32 px, the papers' headline task (protocol.md §1-§5).

Base model: the reference class-conditional U-Net (38,632,323 parameters, :mod:`bench.models.refunet`).
Data: the official ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/`` (variant ``cifar10-official``),
or an image-folder copy such as ``cifar10-jpeg75.tar.gz`` (variant ``cifar10-jpeg75``: a shifted
distribution, never to be placed next to paper numbers).

Profiles: ``paper`` is the protocol (1000-step generalized sampler with eta 1, w = 2, 5,000 samples per
remaining class, the reference recipe's 800,000 pretraining iterations); ``fast`` is a GPU profile
(50-step DDIM, 250 samples per remaining class, a shorter pretraining with a cosine decay); ``smoke`` shrinks the
network and the data so that tests run it on a CPU.
"""

from __future__ import annotations

from bench.datasets import CLASS_NAMES
from bench.models.refunet import CIFAR10_CONFIG
from bench.tasks import SMOKE_METHOD_SIZES, ClassifierRecipe, Profile, Recipe
from bench.tasks.images import ImageTask

SMOKE_UNET = {"ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0,
              "resolution": 32, "in_channels": 3, "out_channels": 3, "norm_groups": 4}
CLASSIFIER = {"kind": "timm", "model": "resnet18"}

PAPER_RECIPE = Recipe(steps=800_000, batch=128, lr=2e-4, optimizer="adam", clip=1.0, p_drop=0.1, ema=0.9999,
                      lr_schedule="constant")
FAST_RECIPE = Recipe(steps=40_000, batch=128, lr=2e-4, optimizer="adam", clip=1.0, p_drop=0.1, ema=0.9999,
                     lr_schedule="cosine")
SMOKE_RECIPE = Recipe(steps=30, batch=16, lr=2e-3, optimizer="adamw", clip=1.0, p_drop=0.1, ema=0.9,
                      lr_schedule="cosine")

CIFAR10 = ImageTask(
    name="cifar10-class",
    description="CIFAR-10 32x32, forget one class (50,000 train / 10,000 test); reference U-Net",
    dataset_variant="cifar10",
    class_names=CLASS_NAMES["cifar10"],
    channels=3,
    image_size=32,
    unet_config=CIFAR10_CONFIG,
    arch="reference-unet",
    classifier_arch=CLASSIFIER,
    classifier_recipe=ClassifierRecipe(epochs=8, batch=256, lr=2e-3, weight_decay=5e-4, flip=True),
    data_source="--data-root (cifar-10-python.tar.gz, cifar-10-batches-py/ or an image-folder tree), or the cache",
    dataset="cifar10",
    profiles={
        "smoke": Profile("smoke", pretrain=SMOKE_RECIPE, sampler_steps=4, guidance=2.0, eta=0.0, n_ua=8,
                         n_per_class=2, n_probes=1, probe_n=4, unet_config=SMOKE_UNET,
                         classifier_arch={"kind": "small-cnn"}, classifier_epochs=3, max_per_class=20,
                         eval_batch=128, method_overrides=SMOKE_METHOD_SIZES,
                         description="tests only: 20 images per class, a tiny U-Net"),
        "fast": Profile("fast", pretrain=FAST_RECIPE, sampler_steps=50, guidance=2.0, eta=0.0, n_ua=500,
                        n_per_class=250, n_probes=2, probe_n=64, eval_batch=1000, fid_ref_per_class=500,
                        description="GPU: 50-step DDIM, w=2, 500 forget-class and 250 per remaining class"),
        "paper": Profile("paper", pretrain=PAPER_RECIPE, sampler_steps=1000, guidance=2.0, eta=1.0, n_ua=500,
                         n_per_class=5000, n_probes=4, probe_n=128, eval_batch=1000,
                         description="protocol: 1000-step generalized sampler (eta=1), w=2, 5,000 per class"),
    },
    notes={"weights": "raw weights are sampled for multi-step methods (SalUn/SFR-on CIFAR-10 protocol)"},
)
