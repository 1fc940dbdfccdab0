"""A user's ``DiTPipeline`` folder as a latent class-conditional base model: the DiT (``transformer/``), the VAE
that maps 256 px images to its latents and back (``vae/``), and the noise schedule it was trained with
(``scheduler/``), each checked before any weight is read so a wrong folder is one line naming what was found.

DiT-XL/2 was trained on ``scaling_factor * E(x)`` (a posterior sample of the VAE encoder, scaled by 0.18215)
with the linear beta schedule 1e-4..0.02 over 1,000 steps: the schedule of the harness's pixel DDPM, so the
class methods' losses and samplers apply unchanged to the latents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from bench.core.errors import BenchError
from bench.models.dit import CLASS_NAME as DIT_CLASS
from bench.models.dit import CondDiT

PIPELINE = "a DiTPipeline folder with transformer/ (DiTTransformer2DModel), vae/ (AutoencoderKL) and scheduler/"
# the harness's pixel schedule (bench.models.diffusion.Diffusion), which the DiT's must equal
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


@dataclass(frozen=True)
class PipelineLayout:
    """What a checked ``DiTPipeline`` folder holds (from its configs only)."""

    root: Path
    transformer: Path
    vae: Path
    num_classes: int
    latent_channels: int
    latent_size: int
    vae_scale: int  # pixels per latent cell: 2 ** (VAE levels - 1)
    scaling_factor: float

    def describe(self) -> dict:
        return {"latent_shape": [self.latent_channels, self.latent_size, self.latent_size],
                "vae_scale": self.vae_scale, "scaling_factor": self.scaling_factor, "num_classes": self.num_classes}


def _config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read: {exc}") from None


def check_pipeline(path: Path | None, task_name: str = "this task") -> PipelineLayout:
    """The layout of ``path`` if it is a usable ``DiTPipeline`` folder, else one BenchError saying what it is."""
    if path is None:
        raise BenchError(f"{task_name} never trains a base model: pass --base-model DIR, your DiT-XL/2-256 "
                         f"diffusers folder ({PIPELINE}, e.g. a local copy of facebook/DiT-XL-2-256)")
    root = Path(path)
    if not root.is_dir():
        kind = "a file" if root.exists() else "no such folder"
        raise BenchError(f"--base-model {root}: {kind}; {task_name} needs {PIPELINE}")
    if (root / "unet").is_dir():
        raise BenchError(f"--base-model {root}: a U-Net pipeline folder (unet/), not a DiT; {task_name} needs "
                         f"{PIPELINE}")
    if (root / "config.json").is_file():  # a single model's folder, not a pipeline
        found = _config(root / "config.json").get("_class_name") or "an unnamed model"
        if found == DIT_CLASS:
            raise BenchError(f"--base-model {root}: a bare {DIT_CLASS} folder without its VAE; {task_name} needs "
                             f"the whole pipeline ({PIPELINE})")
        raise BenchError(f"--base-model {root}: holds a {found}, not a DiT; {task_name} needs {PIPELINE}")
    transformer = root / "transformer"
    if not (transformer / "config.json").is_file():
        raise BenchError(f"--base-model {root}: no transformer/config.json; {task_name} needs {PIPELINE}")
    tcfg = _config(transformer / "config.json")
    if tcfg.get("_class_name") != DIT_CLASS:
        raise BenchError(f"--base-model {root}: transformer/ holds a {tcfg.get('_class_name')}, not a {DIT_CLASS}")
    vae = root / "vae"
    if not (vae / "config.json").is_file():
        raise BenchError(f"--base-model {root}: no VAE (vae/config.json is missing); {task_name} works on the VAE's "
                         f"latents and decodes its samples with it, so it needs {PIPELINE}")
    vcfg = _config(vae / "config.json")
    if vcfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise BenchError(f"--base-model {root}: vae/ holds a {vcfg.get('_class_name')}, not an AutoencoderKL")
    _check_schedule(root)
    levels = len(vcfg.get("block_out_channels") or [64])
    return PipelineLayout(root, transformer, vae, int(tcfg.get("num_embeds_ada_norm") or -1),
                          int(tcfg.get("in_channels", 4)), int(tcfg.get("sample_size", 32)), 2 ** (levels - 1),
                          float(vcfg.get("scaling_factor", 0.18215)))


def _check_schedule(root: Path) -> None:
    cfg_file = root / "scheduler" / "scheduler_config.json"
    if not cfg_file.is_file():
        raise BenchError(f"--base-model {root}: no scheduler/scheduler_config.json (the noise schedule the DiT was "
                         f"trained with); a DiTPipeline folder has one")
    cfg = _config(cfg_file)
    wrong = {k: cfg[k] for k, v in SCHEDULE.items() if k in cfg and _differs(cfg[k], v)}
    for key, expected in (("prediction_type", "epsilon"), ("trained_betas", None)):
        if cfg.get(key, expected) != expected:
            wrong[key] = cfg[key]
    if wrong:
        raise BenchError(f"--base-model {root}: scheduler {wrong} differs from the DDPM schedule the class methods "
                         f"use ({SCHEDULE}, epsilon prediction)")


def _differs(found, expected) -> bool:
    if isinstance(expected, float):
        return not isinstance(found, (int, float)) or abs(float(found) - expected) > 1e-12
    return found != expected


def check_against_task(layout: PipelineLayout, num_classes: int, latent_shape: tuple[int, int, int],
                       pixel_size: int) -> None:
    """The DiT's label table, latent shape and the VAE's scale against the task and its data."""
    if layout.num_classes != num_classes:
        raise BenchError(f"--base-model {layout.root}: the DiT has {layout.num_classes} classes, the data folder has "
                         f"{num_classes} class folders; they must match (ImageNet: 1000)")
    c, s = latent_shape[0], latent_shape[1]
    found = (layout.latent_channels, layout.latent_size, layout.vae_scale)
    if found != (c, s, pixel_size // s):
        raise BenchError(f"--base-model {layout.root}: the DiT works on {layout.latent_channels}x{layout.latent_size}"
                         f"x{layout.latent_size} latents of {layout.latent_size * layout.vae_scale} px images; this "
                         f"task needs {c}x{s}x{s} latents of {pixel_size} px (DiT-XL/2-256)")


class VAECodec:
    """Images in [-1, 1] to scaled latents and back through a frozen VAE, ``chunk`` images at a time (a VAE
    decoder at 256 px holds gigabytes of activations per hundred images)."""

    def __init__(self, vae: AutoencoderKL, scaling_factor: float, chunk: int = 32) -> None:
        self.vae, self.scaling_factor, self.chunk = vae.eval().requires_grad_(False), float(scaling_factor), chunk

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``scaling_factor * z`` with ``z`` a sample of the encoder's posterior (how DiT's training data were
        encoded); float32 on the VAE's device."""
        out = []
        for s in range(0, len(x), self.chunk):
            dist = self.vae.encode(x[s:s + self.chunk].to(self.device, torch.float32)).latent_dist
            out.append(dist.sample(generator).float() * self.scaling_factor)
        if not out:
            f = 2 ** (len(self.vae.config.block_out_channels) - 1)
            return torch.zeros((0, self.vae.config.latent_channels, x.shape[-2] // f, x.shape[-1] // f))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images in (about) [-1, 1] of scaled latents."""
        out = [self.vae.decode(z[s:s + self.chunk].float() / self.scaling_factor).sample.float()
               for s in range(0, len(z), self.chunk)]
        return torch.cat(out)


def load_pipeline(layout: PipelineLayout) -> tuple[CondDiT, VAECodec]:
    """The DiT (as the harness's ``net(z, t, c)``) and the VAE codec, in float32 on the CPU, offline."""
    try:
        net = CondDiT.load(layout.transformer, layout.num_classes).float().eval()
    except Exception as exc:
        raise BenchError(f"{layout.transformer}: cannot load a diffusers {DIT_CLASS}: {exc}") from exc
    try:
        vae = AutoencoderKL.from_pretrained(layout.vae, local_files_only=True).float()
    except Exception as exc:
        raise BenchError(f"{layout.vae}: cannot load a diffusers AutoencoderKL: {exc}") from exc
    return net, VAECodec(vae, layout.scaling_factor)
