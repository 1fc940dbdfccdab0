"""What every method returns, and what the evaluator samples: ``sample(labels, seed) -> uint8``.

A multi-step diffusion sampler and a one-step generator (SFD, PECKER) implement the same interface,
so every method is scored by the same code. The noise of image ``i`` of class ``c`` depends only on
``(seed, c, i)``: samples do not depend on the batch size.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.models.diffusion import Diffusion, NoiseFn, to_uint8
from bench.models.noise import CounterNoise


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    was = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was)


def running_index(labels: Tensor) -> Tensor:
    """For each entry, how many earlier entries share its label (the per-class image index)."""
    idx = torch.empty_like(labels)
    seen: dict[int, int] = {}
    for k, c in enumerate(labels.tolist()):
        idx[k] = seen.get(c, 0)
        seen[c] = idx[k].item() + 1
    return idx


class Generator(ABC):
    kind: str = "multi-step"
    nfe: int = 1  # declared network evaluations per image; the driver also measures it

    def __init__(self, net: nn.Module, image_shape: tuple[int, ...], weights: str, batch_size: int = 1000,
                 decode: Callable[[Tensor], Tensor] | None = None):
        self.net = net
        self.image_shape = image_shape  # the network's input: pixels, or latents when ``decode`` is set
        self.weights = weights
        self.batch_size = batch_size
        # a latent model's decoder (latents -> images in [-1, 1], e.g. a VAE); None: the network draws pixels
        self.decode = decode

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @abstractmethod
    def _generate(self, labels: Tensor, noise: NoiseFn) -> Tensor:
        """Images in model space [-1, 1] for ``labels`` (already on the device)."""

    def describe(self) -> dict:
        out = {"output": self.kind, "nfe_declared": self.nfe, "weights": self.weights}
        if self.decode is not None:
            out["decoded_from"] = "latents " + "x".join(str(d) for d in self.image_shape)
        return out

    @torch.no_grad()
    def sample(self, labels: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """uint8 images ``(N, C, H, W)`` on the CPU for the given class labels."""
        labels = labels.long().cpu()
        index = running_index(labels) if index is None else index.long().cpu()
        out = []
        with eval_mode(self.net):
            for s in range(0, len(labels), self.batch_size):
                lab, ind = labels[s:s + self.batch_size], index[s:s + self.batch_size]
                noise = CounterNoise(seed, lab, ind, self.image_shape, self.device)
                x = self._generate(lab.to(self.device), noise)
                if self.decode is not None:
                    x = self.decode(x)
                out.append(to_uint8(x).cpu())
        return torch.cat(out) if out else torch.empty((0, *self.image_shape), dtype=torch.uint8)


class DiffusionSampler(Generator):
    """The protocol sampler over a conditional epsilon-network, with "(1+w)" guidance."""

    kind = "multi-step"

    def __init__(self, net: nn.Module, diffusion: Diffusion, steps: int, guidance: float, eta: float,
                 image_shape: tuple[int, ...], weights: str = "raw", batch_size: int = 1000,
                 progress: str | None = None, decode: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(net, image_shape, weights, batch_size, decode)
        self.diffusion, self.steps, self.guidance, self.eta = diffusion, steps, guidance, eta
        self.nfe = steps * (1 if guidance == 0 else 2)
        self.progress = progress  # a progress bar's label, for long standalone sampling (not the driver's)
        self._bar = None

    def sample(self, labels: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        if not self.progress:
            return super().sample(labels, seed, index)

        batches = -(-len(labels) // self.batch_size)
        with tqdm(total=batches * self.steps, desc=self.progress, unit="step", leave=False) as bar:
            self._bar = bar
            try:
                return super().sample(labels, seed, index)
            finally:
                self._bar = None

    def describe(self) -> dict:
        return {**super().describe(), "sampler": "generalized" if self.eta > 0 else "ddim",
                "sampler_steps": self.steps, "eta": self.eta, "guidance_w": self.guidance,
                "guidance_form": "(1+w)"}

    def _generate(self, labels: Tensor, noise: NoiseFn) -> Tensor:
        on_step = self._bar.update if self._bar is not None else None
        return self.diffusion.sample(self.net, labels, self.steps, self.guidance, self.eta, noise, on_step)


class OneStepGenerator(Generator):
    """One network evaluation per image: ``fn(net, z, labels)`` maps N(0, I) noise to an image."""

    kind = "one-step"

    def __init__(self, net: nn.Module, fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
                 image_shape: tuple[int, ...], weights: str = "ema", nfe: int = 1,
                 batch_size: int = 1000, decode: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(net, image_shape, weights, batch_size, decode)
        self.fn = fn
        self.nfe = nfe

    def describe(self) -> dict:
        return {**super().describe(), "sampler": "one-step", "sampler_steps": 1, "eta": 0.0,
                "guidance_w": 0.0, "guidance_form": "(1+w)"}

    def _generate(self, labels: Tensor, noise: NoiseFn) -> Tensor:
        return self.fn(self.net, noise(()), labels)
