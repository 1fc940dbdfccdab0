"""FID-family numbers through torch-fidelity or clean-fid, on the task classifier's features.

Inception weights cannot be downloaded here, so the penultimate layer of the harness classifier is
plugged into both libraries through their custom feature-extractor APIs (assets.md §5). The
extractor name carries the classifier's weight hash, and every value is recorded with
``fid_features = task-classifier``: it must never be compared with Inception FID.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

_EXTRACTORS: dict[str, Callable[[Tensor], Tensor]] = {}


class _Images(Dataset):
    """torch-fidelity input: items are uint8 (C, H, W) tensors with no label."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def register_extractor(name: str, features: Callable[[Tensor], Tensor], layer: str, channels: int = 3) -> str:
    """Make ``features`` (a uint8 ``(B, C, H, W)`` batch -> ``(B, D)`` features) available to
    torch-fidelity as the feature extractor ``name`` with the single layer ``layer``; returns ``name``.

    torch-fidelity looks a name up when it builds the extractor, so registering a name again only
    swaps the callable (the library refuses a second class under one name)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    known = name in _EXTRACTORS
    _EXTRACTORS[name] = features
    if known:
        return name

    class CallableFeatures(FeatureExtractorBase):
        def __init__(self, fe_name, features_list, **kwargs):
            super().__init__(fe_name, features_list)
            self.features = _EXTRACTORS[fe_name]

        @staticmethod
        def get_provided_features_list():
            return (layer,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return layer

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, channels, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            return (self.features(x).double().cpu(),)

    register_feature_extractor(name, CallableFeatures)
    return name


def _classifier_extractor(classifier: nn.Module, tag: str) -> str:
    def features(x: Tensor) -> Tensor:
        dev = next(classifier.parameters()).device
        return classifier.features(x.to(dev).float() / 127.5 - 1.0)

    return register_extractor(f"task-classifier-{tag}", features, "penultimate", channels=1)


class ClassifierFeatures:
    """Penultimate features of the task classifier as an (N, D) float64 array, in batches on the
    classifier's device; ``cache_key`` names the classifier's weights (for cached reference statistics)."""

    def __init__(self, classifier: nn.Module, tag: str, batch_size: int = 1000) -> None:
        self.net, self.tag, self.batch_size = classifier, tag, batch_size

    def cache_key(self) -> dict:
        return {"extractor": "task-classifier-penultimate", "weights": self.tag}

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> np.ndarray:
        dev = next(self.net.parameters()).device
        out = [self.net.features(images[s:s + self.batch_size].to(dev).float() / 127.5 - 1.0).double().cpu()
               for s in range(0, len(images), self.batch_size)]
        return torch.cat(out).numpy()


def torch_fidelity_metrics(generated: Tensor, reference: Tensor, classifier: nn.Module, tag: str,
                           kid: bool = True, prc: bool = True) -> dict[str, float]:
    """FID (and KID, precision/recall) with ``generated`` as input1 and ``reference`` as input2."""
    from torch_fidelity import calculate_metrics

    name = _classifier_extractor(classifier, tag)
    n = min(len(generated), len(reference))
    m = calculate_metrics(input1=_Images(generated), input2=_Images(reference), fid=True,
                          kid=kid and n >= 2, prc=prc and n > 3, feature_extractor=name,
                          kid_subset_size=min(1000, n), kid_subsets=100, cuda=False, cache=False,
                          verbose=False, save_cpu_ram=True, batch_size=256)
    out = {"fid": float(m["frechet_inception_distance"])}
    if "kernel_inception_distance_mean" in m:
        out["kid"] = float(m["kernel_inception_distance_mean"])
    if "precision" in m:
        out["precision"], out["recall"] = float(m["precision"]), float(m["recall"])
    return out


def clean_fid(generated: Tensor, reference: Tensor, classifier: nn.Module) -> dict[str, float]:
    """FID through clean-fid's folder pipeline (PNG round trip, native resolution)."""
    from cleanfid import fid

    channels = generated.shape[1]
    dev = next(classifier.parameters()).device

    def extract(batch: Tensor) -> Tensor:  # float (B, 3, H, W) in 0..255
        x = batch[:, :channels].to(dev) / 127.5 - 1.0
        return classifier.features(x)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for name, imgs in (("gen", generated), ("ref", reference)):
            d = Path(tmp) / name
            d.mkdir()
            for i, img in enumerate(imgs):
                arr = img.permute(1, 2, 0).numpy()
                Image.fromarray(arr[:, :, 0] if channels == 1 else arr).save(d / f"{i:06d}.png")
            dirs.append(str(d))
        score = fid.compute_fid(dirs[0], dirs[1], mode="clean", custom_feat_extractor=extract,
                                custom_fn_resize=lambda a: a.astype(np.float32), device=dev,
                                num_workers=0, batch_size=256, use_dataparallel=False, verbose=False)
    return {"fid": float(score)}
