"""Build, save and load a task's diffusion U-Net, whichever architecture the task declares.

``reference-unet``: the papers' class-conditional U-Net (:mod:`bench.models.refunet`);
``diffusers-unet``: a diffusers ``UNet2DModel`` with a class-embedding table (:class:`bench.nets.CondUNet`).
A saved folder says which it holds in its ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

ARCHES = ("reference-unet", "diffusers-unet")


def build_unet(arch: str, config: dict, num_classes: int) -> nn.Module:
    if arch == "reference-unet":
        from bench.models.refunet import RefUNet

        return RefUNet(config, num_classes)
    if arch == "diffusers-unet":
        from bench.nets import CondUNet

        return CondUNet(config, num_classes)
    raise ValueError(f"unknown U-Net architecture {arch!r}; choose from {', '.join(ARCHES)}")


def saved_arch(folder: Path) -> str:
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return cfg.get("arch", "diffusers-unet")


def load_unet(folder: Path, num_classes: int) -> nn.Module:
    """A U-Net saved by ``net.save(folder)`` (either architecture)."""
    if saved_arch(folder) == "reference-unet":
        from bench.models.refunet import RefUNet

        return RefUNet.load(folder, num_classes)
    from bench.nets import CondUNet

    return CondUNet.load(folder, num_classes)


def weight_file(folder: Path) -> str:
    """The relative path of the weights inside a saved U-Net folder (for hashes in the manifest)."""
    files = sorted(p.name for p in Path(folder).glob("*.safetensors"))
    return files[0] if files else ""
