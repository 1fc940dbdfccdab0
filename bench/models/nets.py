"""Networks: the class-conditional diffusers U-Net (with a null class for guidance) and the small
task classifier used for UA, retained accuracy and classifier-feature FID."""

from __future__ import annotations

import copy
from pathlib import Path

from diffusers import UNet2DModel
from torch import Tensor, nn


class CondUNet(nn.Module):
    """A diffusers ``UNet2DModel`` with ``num_classes + 1`` class embeddings; id ``num_classes`` is
    the learned null class used by label dropout and classifier-free guidance.

    The wrapper returns a plain tensor so that the driver's forward/backward counting hooks see
    every network evaluation.
    """

    def __init__(self, unet_config: dict, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.null_class = num_classes
        self.unet = UNet2DModel(**unet_config, num_class_embeds=num_classes + 1)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return self.unet(x, t, class_labels=c).sample

    def save(self, folder: Path) -> None:
        self.unet.save_pretrained(folder, safe_serialization=True)

    @classmethod
    def load(cls, folder: Path, num_classes: int) -> CondUNet:
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net.num_classes = num_classes
        net.null_class = num_classes
        net.unet = UNet2DModel.from_pretrained(folder, local_files_only=True)
        if net.unet.config.num_class_embeds != num_classes + 1:
            raise ValueError(f"{folder}: U-Net has {net.unet.config.num_class_embeds} class embeddings, "
                             f"expected {num_classes + 1}")
        return net

    def clone(self) -> CondUNet:
        return clone_without_hooks(self)


def clone_without_hooks(net: nn.Module) -> nn.Module:
    """A deep copy with no hooks attached (hooks belong to the copy's owner)."""
    twin = copy.deepcopy(net)
    for m in twin.modules():
        m._forward_hooks.clear()
        m._backward_hooks.clear()
        m._forward_pre_hooks.clear()
    return twin


class SmallClassifier(nn.Module):
    """Three-convolution CNN; ``features`` is the penultimate embedding used for FID/KID."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feat_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, feat_dim, 3, padding=1), nn.GroupNorm(8, feat_dim), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of images in model space [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
