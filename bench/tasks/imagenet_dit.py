"""``imagenet-dit``: forget one ImageNet class in the user's DiT-XL/2-256, in the VAE's latent space.

Nothing here is trained by the harness. The user brings the three things the task is about:

* the base model, a diffusers ``DiTPipeline`` folder (``transformer/``, ``vae/``, ``scheduler/``) given as
  ``--base-model`` (:mod:`bench.models.latent` loads and checks it);
* ImageNet as class folders, ``--data-root DIR`` with ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG``
  (the validation images sorted into class folders), read lazily (:mod:`bench.datasets.lazy_folder`);
* an ImageNet classifier for UA and retained accuracy, a timm model given as ``--classifier``.

The methods see the DiT as on any class task (``net(z, t, c) -> eps``, the null class 1000, the linear
schedule DiT was trained with) but the data they get are VAE latents (4x32x32 at 256 px, scaled by the VAE's
``scaling_factor``) of the user's training images, and the samples are decoded to pixels before the
classifier and the Inception FID against the validation images. The task's ``channels``/``image_size`` are
the latent's, so loss-size rescalings (RL's alpha) see the 4,096 latent elements the loss sums over.

The number of classes is the number of class folders (1,000 for ImageNet); it must match the DiT's label
table. The whole-set calls of a method (``forget_data``, ``remain_data``: saliency and Fisher passes, SA's real
replay) get the first :attr:`ImageNetDiTTask.forget_set` images of the forget class and the first
:attr:`ImageNetDiTTask.remain_set_per_class` of every other class; the batch streams cover every image.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bench.core.errors import BenchError
from bench.datasets.lazy_folder import LazyImageFolder
from bench.tasks import SMOKE_METHOD_SIZES, ClassifierRecipe, Profile, Recipe, Splits, Task

# DiT-XL/2-256 as diffusers ships it: 28 blocks of width 1152 (16 heads of 72), patch 2, 4 latent channels in,
# 8 out (noise and learned variance), 1,000 classes
DIT_XL_2 = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=28, num_attention_heads=16,
                attention_head_dim=72, norm_num_groups=32)
NOT_TRAINED = Recipe(steps=0)  # the base model is the user's; the harness never trains one here
DATA_HOWTO = ("pass --data-root DIR with ImageNet as class folders: DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG "
              "(validation images sorted into the same class folders)")
GUIDANCE = 3.0  # "(1+w)" form: w = 3 is DiT's sampling scale 4.0 (s = 1 + w); not calibrated on a GPU yet

# budgets for one GPU: batches small enough for a 675M-parameter DiT with Adam states at 256 px
GPU_METHOD_SIZES = {
    "*": {"batch": 32, "fisher_batch": 8},
    "sa": {"n_replay": 8, "fim_images": 64},
    "ebu": {"n_replay": 8, "fim_images": 64},
}


@dataclass
class ImageNetDiTTask(Task):
    latent: ClassVar[bool] = True  # the driver gives it latent assets (bench.assets.latent_classes)
    pixel_size: int = 256  # images are center-cropped to this size; latents are pixel_size / 8
    train_folder: str = "train"
    val_folder: str = "val"
    forget_set: int = 256  # images of the forget class that forget_data() returns
    remain_set_per_class: int = 2  # images per remaining class that remain_data() returns
    # a probe FID would need samples of every remaining class at every probe (999 classes): probes score UA only
    probe_fid: bool = False
    data_info: dict = field(default_factory=dict)
    train: LazyImageFolder | None = field(default=None, repr=False, compare=False)
    val: LazyImageFolder | None = field(default=None, repr=False, compare=False)

    @property
    def bound(self) -> bool:
        return self.train is not None

    def bind(self, data_root: Path | None, cache_root: Path | None = None) -> ImageNetDiTTask:
        """A copy reading the user's folders: the class names (and so the class count) are the folders'."""
        if data_root is None:
            raise BenchError(f"{self.name} reads ImageNet from your disk: {DATA_HOWTO}")
        root = Path(data_root)
        if not root.is_dir():
            raise BenchError(f"--data-root {root}: no such folder; {self.name} needs {DATA_HOWTO}")
        train = LazyImageFolder.scan(root / self.train_folder, self.pixel_size, f"--data-root {root}")
        val = LazyImageFolder.scan(root / self.val_folder, self.pixel_size, f"--data-root {root}")
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))[:3]
            only_val = sorted(set(val.classes) - set(train.classes))[:3]
            raise BenchError(f"--data-root {root}: {self.train_folder}/ has {train.num_classes} class folders and "
                             f"{self.val_folder}/ {val.num_classes}; they must be the same (only in "
                             f"{self.train_folder}/: {only_train}; only in {self.val_folder}/: {only_val})")
        bound = dataclasses.replace(self, class_names=train.classes, train=train, val=val)
        digest = hashlib.sha256(f"{train.listing_sha256()}\n{val.listing_sha256()}".encode()).hexdigest()
        bound.dataset_variant = "imagenet-imagefolder" if train.num_classes == 1000 else \
            f"imagenet-imagefolder-{train.num_classes}-classes"
        bound.data_info = {"data_source": str(root), "dataset_variant": bound.dataset_variant, "data_sha256": digest,
                           "data_hash": "file listing (class folders and file names)",
                           "data_train_images": len(train), "data_val_images": len(val),
                           "data_classes": train.num_classes, "data_pixel_size": self.pixel_size}
        return bound

    def load_splits(self, data_root=None, cache_root=None) -> Splits:
        raise BenchError(f"{self.name} streams its images from --data-root; it has no in-memory splits")

    def make_classifier(self):
        raise BenchError(f"{self.name} trains no classifier: pass --classifier, your timm ImageNet model")


IMAGENET_DIT = ImageNetDiTTask(
    name="imagenet-dit",
    description="ImageNet 256 px, forget one class in your DiT-XL/2-256 (DiTPipeline folder), in its VAE latent space",
    dataset_variant="imagenet-imagefolder",
    class_names=tuple(f"class {i}" for i in range(1000)),  # replaced by the class folders' names when bound
    channels=4,
    image_size=32,
    unet_config=DIT_XL_2,
    arch="dit",
    classifier_recipe=ClassifierRecipe(epochs=0),  # the classifier is the user's (--classifier)
    classifier_arch={"kind": "timm-user"},
    fid_features="inception-v3",
    data_source=f"yours: {DATA_HOWTO}; --base-model your DiTPipeline folder; --classifier your timm ImageNet model",
    profiles={
        "smoke": Profile("smoke", pretrain=NOT_TRAINED, sampler_steps=2, guidance=GUIDANCE, eta=0.0, n_ua=2,
                         n_per_class=1, n_probes=1, probe_n=2, eval_batch=8, fid_ref_per_class=2,
                         fid_features="task-classifier",  # a 2048-d Inception FID alone takes longer than the test
                         method_overrides={**SMOKE_METHOD_SIZES, "*": {"batch": 2, "fisher_batch": 2},
                                           "rl": {"iters": 2}, "salun": {"iters": 2}},
                         description="tests only: a tiny DiTPipeline folder and image tree built by the tests"),
        "fast": Profile("fast", pretrain=NOT_TRAINED, sampler_steps=50, guidance=GUIDANCE, eta=0.0, n_ua=100,
                        n_per_class=5, n_probes=4, probe_n=32, eval_batch=125, fid_ref_per_class=10,
                        method_overrides=GPU_METHOD_SIZES,
                        description="one GPU: 50-step DDIM, w=3 (DiT's scale 4), 100 forget-class samples and 5 per "
                                    "remaining class; Inception FID against 10 validation images per class"),
    },
    notes={"guidance": f"w={GUIDANCE}: DiT's sampling scale 4.0, not calibrated by the harness (no GPU run yet)",
           "retrain": "no Retrain row: the harness never trains an ImageNet DiT"},
)
