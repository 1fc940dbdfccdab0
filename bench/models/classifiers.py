"""UA classifiers: timm ResNets with a small-image stem, built from a config (no downloaded weights).

The papers fine-tune an ImageNet ResNet-34 at 224 px (protocol.md §4.1). Those weights are rarely on
an offline machine, so the harness trains timm's ResNet from scratch at the task's native size, with
the CIFAR stem (a 3x3 stride-1 convolution and no max-pool, so 32 px images keep their resolution into
the first stage). Inputs are model-space images in [-1, 1], which is the protocol's
``Normalize(mean=0.5, std=0.5)``. ``features`` is the pooled penultimate embedding (FID features).
"""

from __future__ import annotations

import timm
from torch import Tensor, nn

from bench.models.nets import SmallClassifier


class TimmClassifier(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, model: str = "resnet18",
                 layers: tuple[int, ...] | None = None, channels: tuple[int, ...] | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        kwargs = {}
        if layers is not None:
            kwargs["layers"] = tuple(layers)
        if channels is not None:
            kwargs["channels"] = tuple(channels)
            kwargs["stem_width"] = channels[0]
        self.net = timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                     drop_rate=drop_rate, **kwargs)
        width = self.net.conv1.out_channels
        self.net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()

    def features(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_classifier(spec: dict, in_channels: int, num_classes: int) -> nn.Module:
    """``spec`` is a task's ``classifier_arch``: ``{"kind": "small-cnn"}`` or
    ``{"kind": "timm", "model": "resnet18", "layers": [...], "channels": [...]}``."""
    kind = spec.get("kind", "small-cnn")
    if kind == "small-cnn":
        return SmallClassifier(in_channels, num_classes)
    if kind == "timm":
        return TimmClassifier(in_channels, num_classes, spec.get("model", "resnet18"), spec.get("layers"),
                              spec.get("channels"), spec.get("drop_rate", 0.0))
    raise ValueError(f"unknown classifier kind {kind!r}")
