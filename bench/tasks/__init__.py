"""Tasks: dataset, base-model architecture and recipes, classifier recipe and evaluation profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor, nn

from bench.core.argchecks import check_profile
from bench.core.registry import Registry
from bench.models.classifiers import build_classifier


@dataclass(frozen=True)
class Recipe:
    """Diffusion training recipe shared by Original and Retrain (protocol.md §1.3, scaled per task)."""

    steps: int
    batch: int = 128
    lr: float = 2e-4
    optimizer: str = "adam"  # "adam" | "adamw"
    weight_decay: float = 0.0
    clip: float = 1.0
    p_drop: float = 0.1
    ema: float = 0.9999
    lr_schedule: str = "constant"  # "constant" (reference) | "cosine" (decay to 0 over ``steps``)


@dataclass(frozen=True)
class ClassifierRecipe:
    epochs: int = 30
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    flip: bool = False  # random horizontal flips (natural images; never digits)


@dataclass(frozen=True)
class Profile:
    """Budgets and evaluation settings. Numbers of different profiles must never share a table."""

    name: str
    pretrain: Recipe
    sampler_steps: int
    guidance: float  # w in the reference "(1+w)" form
    eta: float
    n_ua: int  # forget-class samples for UA
    n_per_class: int  # samples per remaining class for retained accuracy and FID
    n_probes: int  # probes spread over the unlearning run (plus one before the first and one after the last iteration)
    probe_n: int  # forget-class samples per probe (UA); probe_n // 2 per remaining class for the probe FID
    ua_target: float = 0.9  # time-to-target threshold on the probe UA
    ttt_resolution: float = 0.02  # weight snapshots for the time-to-target bisection, as a fraction of the budget
    fid_backend: str = "torch-fidelity"
    eval_batch: int = 1000  # images per sampler / classifier batch (memory, not results: noise is per image)
    fid_features: str | None = None  # "task-classifier" or "inception-v3" (None: the task's)
    # the SA/SalUn/SFR-on evaluation quirks for Inception FID: each image min-max stretched before
    # quantisation, and fed to Inception as BGR (protocol.md §3.4, §5.3)
    paper_compat: bool = False
    # FID reference set: the first N training images of each remaining class (None: all of them)
    fid_ref_per_class: int | None = None
    description: str = ""
    # a profile may shrink the task itself (smoke profiles of the real tasks run on a CPU in tests)
    unet_config: dict | None = None  # replaces the task's U-Net config
    classifier_arch: dict | None = None  # replaces the task's classifier architecture
    classifier_epochs: int | None = None  # replaces the classifier recipe's epochs
    max_per_class: int | None = None  # keep the first N training (and N // 5 test) images of each class
    # per-method option overrides applied after the methods' own presets; "*" applies to every method
    # that has the option (smoke profiles of the real tasks shrink batches and replay sets)
    method_overrides: dict | None = None


# what the real tasks' smoke profiles give every method: the pipeline runs, at the smallest sizes
SMOKE_METHOD_SIZES = {
    "*": {"batch": 8, "fisher_batch": 8},
    "sa": {"n_replay": 2, "fim_images": 2, "fim_timesteps": 4},
    "ebu": {"n_replay": 2, "fim_images": 2, "fim_timesteps": 4},
}


class Splits(NamedTuple):
    train_x: Tensor  # float32 in [-1, 1], (N, C, H, W)
    train_y: Tensor  # int64
    test_x: Tensor
    test_y: Tensor
    info: dict = {}  # data_source, dataset_variant, data_sha256 and reader details (recorded in every row)


@dataclass
class Task:
    name: str
    description: str
    dataset_variant: str
    class_names: tuple[str, ...]
    channels: int
    image_size: int
    unet_config: dict
    classifier_recipe: ClassifierRecipe
    profiles: dict[str, Profile]
    default_forget: int = 0
    fid_features: str = "task-classifier"
    weights_evaluated: str = "raw"  # raw weights for multi-step methods (SalUn/SFR-on CIFAR-10 protocol)
    notes: dict[str, str] = field(default_factory=dict)
    arch: str = "diffusers-unet"  # "reference-unet" (protocol.md §1.1) or "diffusers-unet"
    classifier_arch: dict = field(default_factory=lambda: {"kind": "small-cnn"})
    data_source: str = "built in"  # what `bench list tasks` says about where the data come from
    # the --unet value that rebuilt the task with another architecture than its own (None: its own); such
    # a task's cells and base models get identities of their own, while the task's own keep theirs
    unet_switch: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def cover_class(self, forget: int) -> int:
        """The fixed "next" class: RL/SalUn pseudo-label and the SFD/PECKER override class."""
        return (forget + 1) % self.num_classes

    def load_splits(self, data_root=None, cache_root=None) -> Splits:  # pragma: no cover - per task
        raise NotImplementedError

    def make_classifier(self) -> nn.Module:
        return build_classifier(self.classifier_arch, self.channels, self.num_classes)

    def profile(self, name: str) -> Profile:
        check_profile(self.name, name, self.profiles)
        return self.profiles[name]


TASKS: Registry[Task] = Registry("task")
TASKS.add("digits-class", "bench.tasks.digits:DIGITS")
TASKS.add("digits-dit", "bench.tasks.digits_dit:DIGITS_DIT")
TASKS.add("imagenet-dit", "bench.tasks.imagenet_dit:IMAGENET_DIT")
TASKS.add("fashion-mnist-class", "bench.tasks.fashion_mnist:FASHION_MNIST")
TASKS.add("cifar10-class", "bench.tasks.cifar10:CIFAR10")
TASKS.add("stl10-class", "bench.tasks.stl10:STL10")
TASKS.add("sd-digits", "bench.tasks.sd:SD_DIGITS")
TASKS.add("sd-nudity", "bench.tasks.sd:SD_NUDITY")
TASKS.add("sd-object", "bench.tasks.sd:SD_OBJECT")
TASKS.add("sd-style", "bench.tasks.sd:SD_STYLE")
TASKS.add("sd-celebrity", "bench.tasks.sd:SD_CELEBRITY")


def get_task(name: str) -> Task:
    task = TASKS.get(name)
    return task() if isinstance(task, type) else task
