"""Build, save and load a task's diffusion U-Net, whichever architecture the task declares.

``reference-unet``: the papers' class-conditional U-Net (:mod:`bench.models.refunet`);
``diffusers-unet``: a diffusers ``UNet2DModel`` with a class-embedding table (:class:`bench.models.nets.CondUNet`);
``dit``: a diffusers ``DiTTransformer2DModel`` (:class:`bench.models.dit.CondDiT`).
A saved folder says which it holds in its ``config.json``. ``--unet diffusers`` rebuilds a reference task
with the diffusers network (:func:`diffusers_config`, :func:`select_unet`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from bench.core.errors import BenchError
from bench.models.dit import CLASS_NAME as DIT_CLASS
from bench.models.dit import CondDiT
from bench.models.nets import CondUNet
from bench.models.refunet import RefUNet, normalise_config

ARCHES = ("reference-unet", "diffusers-unet", "dit")
UNET_CHOICES = {"reference": "reference-unet", "diffusers": "diffusers-unet"}  # --unet value -> arch


def build_unet(arch: str, config: dict, num_classes: int) -> nn.Module:
    if arch == "reference-unet":
        return RefUNet(config, num_classes)
    if arch == "diffusers-unet":
        return CondUNet(config, num_classes)
    if arch == "dit":
        return CondDiT(config, num_classes)
    raise ValueError(f"unknown U-Net architecture {arch!r}; choose from {', '.join(ARCHES)}")


def saved_arch(folder: Path) -> str:
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if cfg.get("_class_name") == DIT_CLASS:
        return "dit"
    return cfg.get("arch", "diffusers-unet")


def load_unet(folder: Path, num_classes: int) -> nn.Module:
    """A network saved by ``net.save(folder)`` (any of the architectures)."""
    arch = saved_arch(folder)
    if arch == "reference-unet":
        return RefUNet.load(folder, num_classes)
    if arch == "dit":
        return CondDiT.load(folder, num_classes)

    return CondUNet.load(folder, num_classes)


def weight_file(folder: Path) -> str:
    """The relative path of the weights inside a saved U-Net folder (for hashes in the manifest)."""
    files = sorted(p.name for p in Path(folder).glob("*.safetensors"))
    return files[0] if files else ""


def diffusers_config(ref: dict) -> dict:
    """The ``UNet2DModel`` config (for :class:`~bench.models.nets.CondUNet`) of the same shape as a reference-unet
    config: resolution, channels, widths ``ch * ch_mult``, ``num_res_blocks`` resnets per level and
    attention after each of them at the levels whose resolution is in ``attn_resolutions``.

    The settings past the shape make the two agree where diffusers lets them: the reference's
    ``[sin, cos]`` timestep features (``flip_sin_to_cos=False, freq_shift=1``), GroupNorm eps 1e-6, the
    asymmetric (0, 1) padding of its downsampling convolution (``downsample_padding=0``) and one attention
    head as wide as the block (``attention_head_dim=None``)."""
    cfg = normalise_config(ref)
    if not cfg["class_cond"]:
        raise ValueError("only the class-conditional reference U-Net has a diffusers counterpart")
    levels = range(len(cfg["ch_mult"]))
    # the reference halves the resolution with floor division after every level but the last
    attn = [cfg["resolution"] // 2**lvl in set(cfg["attn_resolutions"]) for lvl in levels]
    return {
        "sample_size": cfg["resolution"], "in_channels": cfg["in_channels"], "out_channels": cfg["out_channels"],
        "block_out_channels": [cfg["ch"] * m for m in cfg["ch_mult"]],
        "layers_per_block": cfg["num_res_blocks"],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "add_attention": True,  # the reference's middle block always has attention
        "attention_head_dim": None, "norm_num_groups": cfg["norm_groups"], "norm_eps": 1e-6,
        "dropout": cfg["dropout"], "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    }


def select_unet(task, choice: str | None):
    """``task`` with its base model built as ``--unet choice`` (None or the task's own: ``task`` itself).

    Only reference -> diffusers is a translation; a diffusers task has no reference config to go back to,
    and a concept task's network is Stable Diffusion's. Mistakes raise BenchError."""
    if choice is None:
        return task
    if choice not in UNET_CHOICES:
        raise BenchError(f"--unet must be one of {', '.join(UNET_CHOICES)}, got {choice!r}")
    if getattr(task, "kind", "class") != "class":
        raise BenchError(f"--unet applies to the class tasks; {task.name} is a concept task (model: {task.arch})")
    arch = UNET_CHOICES[choice]
    if arch == task.arch:
        return task
    if arch != "diffusers-unet":
        raise BenchError(f"--unet {choice}: {task.name} is defined with a {task.arch} config, which has no "
                         f"reference-unet counterpart; --unet reference applies to the tasks built on the "
                         f"reference U-Net (fashion-mnist-class, cifar10-class, stl10-class)")
    profiles = {k: dataclasses.replace(p, unet_config=diffusers_config(p.unet_config)) if p.unet_config else p
                for k, p in task.profiles.items()}
    return dataclasses.replace(task, arch=arch, unet_config=diffusers_config(task.unet_config), profiles=profiles,
                               unet_switch=choice)
