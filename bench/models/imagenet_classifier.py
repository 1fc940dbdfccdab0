"""A user's ImageNet classifier (a timm model) as a class task's UA classifier, loaded offline from ``--classifier``.

The harness hands classifiers model-space images in [-1, 1] at the sample size (256 px); an ImageNet model wants
them as it was evaluated: :class:`ImageNetClassifier` maps them to [0, 1], resizes the short side to
``input / crop_pct`` and center-crops ``input`` (224 px by default), then normalises with the ImageNet mean and
standard deviation. A timm folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, as timm
saves models for the Hub) brings its own architecture and ``pretrained_cfg`` (input size, crop, interpolation,
mean, std); a bare state-dict file is read as timm's ``resnet50`` (torchvision's key names) with the spec's
transform for it: resize 232 (bilinear), crop 224.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.models.checkpoints import check_state, read_classifier_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BARE_FILE_ARCH = "resnet50"
BARE_FILE_CFG = {"input_size": (3, 224, 224), "crop_pct": 224 / 232, "interpolation": "bilinear"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HOWTO = ("a timm model folder (config.json with its architecture, and model.safetensors or pytorch_model.bin, as "
         "timm's save_for_hf writes it) or a resnet50 state dict (.safetensors, .pth)")


class ImageNetClassifier(nn.Module):
    """``net`` behind the ImageNet evaluation transform; ``features`` is its pooled penultimate embedding."""

    def __init__(self, net: nn.Module, input_size: int = 224, crop_pct: float = 0.875,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 interpolation: str = "bilinear") -> None:
        super().__init__()
        self.net, self.input_size, self.crop_pct = net, int(input_size), float(crop_pct)
        self.interpolation = "bicubic" if interpolation == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def describe(self) -> dict:
        return {"input_size": self.input_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def prepare(self, x: Tensor) -> Tensor:
        x = (x.float() + 1.0) / 2.0
        short = round(self.input_size / self.crop_pct)
        h, w = x.shape[-2:]
        if min(h, w) != short:
            scale = short / min(h, w)
            x = F.interpolate(x, size=(max(short, round(h * scale)), max(short, round(w * scale))),
                              mode=self.interpolation, antialias=True, align_corners=False).clamp(0.0, 1.0)
        top, left = (x.shape[-2] - self.input_size) // 2, (x.shape[-1] - self.input_size) // 2
        x = x[..., top:top + self.input_size, left:left + self.input_size]
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.net.forward_features(self.prepare(x)), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.prepare(x))


def require_classifier(path: Path | None, task_name: str = "this task") -> Path:
    """``path`` if it exists; one BenchError saying what to pass otherwise."""
    if path is None:
        raise BenchError(f"{task_name} scores UA and retained accuracy with your ImageNet classifier: pass "
                         f"--classifier PATH, {HOWTO}")
    if not Path(path).exists():
        raise BenchError(f"--classifier {path}: no such file or folder")
    return Path(path)


def load_imagenet_classifier(path: Path | None, num_classes: int, task_name: str = "this task") -> ImageNetClassifier:
    """The user's classifier, checked name by name and shape by shape, its head against ``num_classes``."""
    import timm

    path = require_classifier(path, task_name)
    if path.is_dir():
        cfg_file = path / "config.json"
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if not cfg_file.is_file() or weights is None:
            raise BenchError(f"--classifier {path}: not a timm model folder (needs config.json and one of "
                             f"{', '.join(WEIGHT_FILES)})")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"--classifier {cfg_file}: cannot read: {exc}") from None
        arch = cfg.get("architecture")
        if not arch:
            raise BenchError(f"--classifier {cfg_file}: no 'architecture' (is it a timm model folder?)")
        args = {**cfg.get("model_args", {}), "num_classes": int(cfg.get("num_classes", num_classes))}
        data = {**BARE_FILE_CFG, "interpolation": "bicubic", **cfg.get("pretrained_cfg", {})}
    else:
        arch, args, data, weights = BARE_FILE_ARCH, {"num_classes": num_classes}, dict(BARE_FILE_CFG), path
    if args.get("num_classes", 1000) != num_classes:
        raise BenchError(f"--classifier {path}: the classifier has {args.get('num_classes', 1000)} classes, the data "
                         f"folder has {num_classes} class folders; they must match (ImageNet: 1000)")
    try:
        net = timm.create_model(arch, pretrained=False, **args)
    except Exception as exc:
        raise BenchError(f"--classifier {path}: timm cannot build {arch!r} with {args}: {exc}") from exc
    state = read_classifier_state(weights)
    check_state(net, state, weights, f"timm {arch}")
    net.load_state_dict(state)
    size = data.get("input_size", (3, 224, 224))
    return ImageNetClassifier(net.eval(), int(size[-1]), float(data.get("crop_pct") or 0.875),
                              tuple(data.get("mean", IMAGENET_MEAN)), tuple(data.get("std", IMAGENET_STD)),
                              str(data.get("interpolation", "bilinear")))
