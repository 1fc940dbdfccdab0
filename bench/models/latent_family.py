"""The class family in a VAE's latent space (``imagenet-dit``): :class:`~bench.models.family.PixelFamily`'s
conditioning (class labels, the null class as ∅), schedule, loss and "(1+w)" guidance, over latents.

What changes for a method:

* the encoder is the frozen VAE: ``encode`` maps images (uint8 or [-1, 1]) to ``scaling · E(x)``, a posterior
  sample as in DiT's training, and the batch streams hand out encoded latents;
* the whole-set calls (``forget_data``, ``remain_data``, ``surrogate_images``) return *images* in [-1, 1] on the
  device, the first few of each class (the task says how many), which a method encodes with ``encode`` as on a
  concept task; the streams read every training image of the folder, decoded a batch at a time;
* samplers (and one-step generators, through ``decode_latents``) decode their latents with the VAE, so the
  evaluation sees pixels;
* there is no Retrain: the harness never trains an ImageNet DiT (``no_retrain``).

Encoding inside the unlearning loop is charged to the method, as a data loader would be; its images are
counted as ``vae_encoder`` forwards (``encode`` is not a module forward, so no hook sees it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.models.diffusion import from_uint8
from bench.models.family import PixelFamily
from bench.models.generators import DiffusionSampler


class LatentFamily(PixelFamily):
    """Over latent assets (duck-typed: ``base``, ``codec``, ``diffusion``, ``profile``, ``image_shape``,
    ``task`` with ``train`` (a :class:`~bench.datasets.lazy_folder.LazyImageFolder`), ``device``)."""

    def __init__(self, assets: Any, forget: int, cover: int, seed: int, counts: Any = None) -> None:
        self._bind(assets, forget, cover)
        self.pixel_shape = (3, self.task.pixel_size, self.task.pixel_size)
        self.codec, self.counts = assets.codec, counts
        self.train = self.task.train
        remain = [c for c in range(self.num_classes) if c != forget]
        self._forget_idx, self._remain_idx = self.train.indices([forget]), self.train.indices(remain)
        self._forget_set = self.train.indices([forget], self.task.forget_set)
        self._remain_set = self.train.indices(remain, self.task.remain_set_per_class)
        self._stream_seed = seed * 7919
        self._gen = torch.Generator().manual_seed(seed * 7919 + 17)  # VAE posterior samples on a CPU
        self.no_retrain = (f"{self.task.name} has no Retrain row: it would be DiT-XL/2 trained from scratch on "
                           f"ImageNet without the class, and the harness never trains an ImageNet base model")

    @property
    def data_info(self) -> dict:
        return {"data_source": self.task.data_info.get("data_source", ""), "streamed": True,
                "forget_images": len(self._forget_idx), "remain_images": len(self._remain_idx),
                "forget_set": len(self._forget_set), "remain_set": len(self._remain_set)}

    # --- encoder and decoder ------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        x = from_uint8(images) if images.dtype == torch.uint8 else images
        if self.counts is not None and self.counts.enabled:
            self.counts.forward_images["vae_encoder"] += int(x.shape[0])
        return self.codec.encode(x.to(self.device), self._gen if self.device.type == "cpu" else None)

    def decode_latents(self, z: Tensor) -> Tensor:
        return self.codec.decode(z)

    # --- data ----------------------------------------------------------------------------------
    def _images(self, index: np.ndarray) -> tuple[Tensor, Tensor]:
        x, y = self.train.load(index)
        return from_uint8(x).to(self.device), y.to(self.device)

    def forget_data(self) -> tuple[Tensor, Tensor]:
        """The first ``forget_set`` images of the forget class (in [-1, 1]; encode them) and their labels."""
        return self._images(self._forget_set)

    def remain_data(self) -> tuple[Tensor, Tensor]:
        """The first ``remain_set_per_class`` images of every other class, class by class."""
        return self._images(self._remain_set)

    def remain_groups(self) -> Tensor:
        return torch.from_numpy(self.train.label_of(self._remain_set))

    def _encoded(self, index: np.ndarray, batch: int, first: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.train.batches(index, batch, self._next_seed(), first):
            yield self.encode(x), y.to(self.device)

    def forget_batches(self, batch: int, first: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite shuffled batches ``(z0, c)`` of every forget-class training image, encoded."""
        return self._encoded(self._forget_idx, batch, first)

    def remain_batches(self, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self._encoded(self._remain_idx, batch)

    def surrogate_images(self) -> Tensor:
        """SA's surrogate images: the first ``forget_set`` training images of the cover class, in [-1, 1]."""
        return self._images(self.train.indices([self.cover], self.task.forget_set))[0]

    # --- outputs -------------------------------------------------------------------------------
    def sampler(self, net: nn.Module, weights: str = "raw") -> DiffusionSampler:
        p = self.profile
        return DiffusionSampler(net, self.diffusion, p.sampler_steps, p.guidance, p.eta, self.image_shape, weights,
                                decode=self.decode_latents)
