"""A latent class task's assets (``imagenet-dit``): the user's DiT pipeline, the user's ImageNet classifier and the
validation images the FID compares against; the training images stay on disk and are streamed by the family.

It answers what :class:`~bench.assets.classes.Assets` answers for the evaluation, the probes and the metrics
(``base``, ``classifier``, ``family``, ``real_remain``, the metas), but nothing is trained or cached here: the
base model and the classifier are the user's, and Retrain does not exist (the family says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bench.assets.training import predict
from bench.core.cache import default_cache_root
from bench.core.errors import BenchError
from bench.core.hashing import user_model_hash
from bench.core.precision import Precision
from bench.models.diffusion import Diffusion, from_uint8
from bench.models.imagenet_classifier import load_imagenet_classifier
from bench.models.latent import PipelineLayout, VAECodec, check_against_task, check_pipeline, load_pipeline
from bench.models.latent_family import LatentFamily
from bench.models.nets import count_params
from bench.tasks import Profile, Task


@dataclass
class StreamedSplits:
    """What the evaluation reads of a task's splits when its images stay on disk: where they came from."""

    info: dict


class LatentAssets:
    """Everything a cell of a latent class task needs, resolved once per (task, profile, device)."""

    def __init__(self, task: Task, profile: Profile, device: torch.device, cache_root: Path | None = None,
                 base_seed: int = 0, precision: Precision | None = None, data_root: Path | None = None,
                 base_model: Path | None = None, base_weights: str = "ema", classifier_path: Path | None = None):
        if not task.bound:
            task = task.bind(data_root, cache_root)
        self.task, self.profile, self.device = task, profile, torch.device(device)
        self.base_seed, self.training_seed = int(base_seed), None  # nothing is trained
        self.precision = precision or Precision()
        self.cache_root = Path(cache_root or default_cache_root())
        self.root = self.cache_root / task.name
        self.base_model_path = Path(base_model) if base_model else None
        self.classifier_path = Path(classifier_path) if classifier_path else None
        self.splits = StreamedSplits(dict(task.data_info))
        self.diffusion = Diffusion(device=self.device)
        self.inception_weights: str | None = None
        self.base_meta: dict = {}
        self.classifier_meta: dict = {}
        self._net: torch.nn.Module | None = None
        self._codec: VAECodec | None = None
        self._classifier: torch.nn.Module | None = None
        self._reference: tuple[Tensor, Tensor] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The DiT's input: the latent shape."""
        return (self.task.channels, self.task.image_size, self.task.image_size)

    def prepare(self) -> None:
        self.base("raw")
        self.classifier()

    def family(self, forget: int, seed: int, counts=None) -> LatentFamily:
        return LatentFamily(self, forget, self.task.cover_class(forget), seed, counts)

    # --- base model -------------------------------------------------------------------------
    def layout(self) -> PipelineLayout:
        """The user's pipeline folder, checked against the task (configs only, no weights read)."""
        layout = check_pipeline(self.base_model_path, self.task.name)
        check_against_task(layout, self.task.num_classes, self.image_shape, self.task.pixel_size)
        return layout

    def _load(self) -> None:
        layout = self.layout()
        net, codec = load_pipeline(layout)
        self._net = self.precision.prepare(net.to(self.device)).eval()
        codec.vae.to(self.device)
        self._codec = codec
        self.base_meta = {"kind": "user", "path": str(layout.root), "weights": "pipeline",
                          "sha256": user_model_hash(layout.root), "steps": None, "params": count_params(net),
                          **layout.describe()}

    def base(self, weights: str = "raw") -> torch.nn.Module:
        """A fresh copy of the user's DiT (one set of weights serves as ``raw`` and ``ema``)."""
        if weights not in ("raw", "ema"):
            raise ValueError(f"weights must be 'raw' or 'ema', not {weights!r}")
        if self._net is None:
            self._load()
        return self._net.clone()

    @property
    def codec(self) -> VAECodec:
        if self._codec is None:
            self._load()
        return self._codec

    def retrain(self, forget_class: int, steps: int | None = None, weights: str = "raw"):
        raise BenchError(f"{self.task.name} has no Retrain model: the harness never trains an ImageNet DiT")

    def warm_up_batch(self) -> tuple[Tensor, Tensor]:
        """A few encoded training latents of class 0, for the untimed GPU warm-up pass."""
        x, y = self.task.train.load(self.task.train.indices([0], 4))
        return self.codec.encode(from_uint8(x).to(self.device)), y

    # --- classifier and the real images ------------------------------------------------------
    def classifier(self) -> torch.nn.Module:
        """The user's ImageNet classifier; its accuracy and per-class recall are measured here on the validation
        images the FID uses."""
        if self._classifier is None:
            net = load_imagenet_classifier(self.classifier_path, self.task.num_classes, self.task.name)
            net = net.to(self.device).eval().requires_grad_(False)
            x, y = self._validation()
            b = self.profile.eval_batch  # a chunk at a time: 10,000 validation images are 8 GB as floats
            pred = torch.cat([predict(net, from_uint8(x[s:s + b]), batch=b).argmax(1) for s in range(0, len(x), b)])
            digest = user_model_hash(self.classifier_path)
            self.classifier_meta = {
                "kind": "user", "path": str(self.classifier_path), "sha256": digest,
                "files": {"classifier.safetensors": digest}, "test_split": "validation (the FID reference images)",
                "test_images": len(y), "test_acc": float((pred == y).float().mean()),
                "test_recall": [float((pred[y == c] == c).float().mean()) if (y == c).any() else float("nan")
                                for c in range(self.task.num_classes)],
                "params": count_params(net), "transform": net.describe()}
            self._classifier = net
        return self._classifier

    def _validation(self) -> tuple[Tensor, Tensor]:
        """The first ``fid_ref_per_class`` validation images of every class (uint8), decoded once per process."""
        if self._reference is None:
            val = self.task.val
            self._reference = val.load(val.indices(range(val.num_classes), self.profile.fid_ref_per_class))
        return self._reference

    def real_remain(self, forget_class: int) -> Tensor:
        """The FID reference set: the validation images of every class but ``forget_class`` (uint8)."""
        x, y = self._validation()
        return x[y != forget_class]
