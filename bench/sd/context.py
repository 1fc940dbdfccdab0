"""``ConceptContext``: what a concept-forgetting method may use, handed out by the driver.

It mirrors :class:`bench.context.UnlearnContext`: UNets come from the context so their forward and backward
passes are counted (the trainable copy as ``unet``, the frozen teacher as ``unet_frozen``; the text encoder
and VAE under their own names), optimizers come from it so their steps are counted, and the loop comes from
:meth:`steps`, which shows progress and runs the task's probes outside the measured time. The losses here
are SD's element means (sd-concepts spec §0.2).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.context import RunRecords
from bench.errors import BenchError
from bench.generators import eval_mode
from bench.measure import Counts, PeakMemory, Stopwatch
from bench.sd import latent
from bench.sd.data import ConceptData
from bench.sd.latent import SDModel
from bench.sd.sampler import PromptSampler
from bench.tasks.concepts import ConceptProfile, ConceptPrompts


class SkipCell(Exception):
    """Raised by a method that cannot run on this machine (e.g. SFD without a one-step generator): the
    cell is written as a row with ``status="skipped"`` and the reason, and the run continues."""


class ConceptContext(RunRecords):
    def __init__(self, model: SDModel, task, profile: ConceptProfile, concept: int, seed: int, counts: Counts,
                 stopwatch: Stopwatch, data: ConceptData, probe: Callable[[PromptSampler], dict] | None = None,
                 progress: bool = True, label: str = "", memory: PeakMemory | None = None,
                 one_step_generator: str | None = None) -> None:
        self.model, self.task, self.profile = model, task, profile
        self.device = model.device
        self.concept = concept
        self.concept_name = task.concepts[concept]
        self.prompts: ConceptPrompts = task.prompts(concept)
        self.seed = seed
        self.counts, self.stopwatch, self._memory = counts, stopwatch, memory
        self.data = data
        self.one_step_generator = one_step_generator
        self._probe_fn = probe
        self._progress, self._label = progress, label
        self._hooks: list = []
        self._probe_net: nn.Module | None = None
        self.curve: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.setup_seconds: float | None = None
        self.probe_seconds = 0.0
        self.iterations_run = 0
        self._track(model.text_encoder, "text_encoder")
        self._gen = torch.Generator(device="cpu").manual_seed(seed * 7919 + 17)

    # --- models ------------------------------------------------------------------------------
    def _track(self, net: nn.Module, name: str) -> nn.Module:
        self._hooks += self.counts.attach(net, name)
        return net

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.model.alphas_cumprod

    def unet(self, trainable: bool = True) -> nn.Module:
        """A fresh copy of the base UNet: trainable (``train()``, counted as ``unet``; the first one is what
        the probes sample) or frozen (``eval()``, no gradients, counted as ``unet_frozen``)."""
        net = copy.deepcopy(self.model.unet)
        if trainable:
            net.train().requires_grad_(True)
            if self._probe_net is None:
                self._probe_net = net
            return self._track(net, "unet")
        net.eval().requires_grad_(False)
        return self._track(net, "unet_frozen")

    def param_set(self, unet: nn.Module, name: str) -> list[nn.Parameter]:
        """The parameters of a named set (``xattn``, ``noxattn``, ``full``, ``esd-u-2024``); only they train."""
        from bench.sd.loading import param_set

        chosen = param_set(unet, name)
        keep = {id(p) for _, p in chosen}
        for p in unet.parameters():
            p.requires_grad_(id(p) in keep)
        params = [p for _, p in chosen]
        self.record(param_set=name, trainable_params=sum(p.numel() for p in params))
        return params

    # --- text and latents --------------------------------------------------------------------
    def text(self, prompts: list[str] | tuple[str, ...] | str, n: int | None = None) -> Tensor:
        """Frozen text-encoder embeddings (B, 77, D); a single prompt is repeated ``n`` times."""
        if isinstance(prompts, str):
            prompts = [prompts] * (n or 1)
        return self.model.text(list(prompts))

    def latents(self, images: Tensor, sample: bool = True) -> Tensor:
        """``scaling · VAE.encode(x)`` of images in [-1, 1] or uint8 (a posterior sample, as CompVis)."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
        if self.counts.enabled:  # encode() is not a module forward, so no hook sees it
            self.counts.forward_images["vae_encoder"] += int(x.shape[0])
        return self.model.encode(x, self._gen if self.device.type == "cpu" else None, sample=sample)

    def forget_batches(self, batch: int, first: bool = False) -> Iterator[tuple[Tensor, list[str], Tensor]]:
        """Infinite shuffled batches ``(z0, prompts, e)`` of D_f with the forget prompt; ``first=True`` is the
        reference's quirk of always taking the first ``batch`` images (an unshuffled ``next(iter(...))``)."""
        return self._batches(self.data.forget_images, self.data.forget_prompts, batch, first)

    def remain_batches(self, batch: int) -> Iterator[tuple[Tensor, list[str], Tensor]]:
        """Infinite shuffled batches ``(z0, prompts, e)`` of D_r, each image with its own caption."""
        return self._batches(self.data.remain_images, self.data.remain_prompts, batch, False)

    def _batches(self, images: Tensor, prompts: list[str], batch: int, first: bool):
        if len(images) == 0:
            raise BenchError(f"task {self.task.name}: no training images for this method (check --forget-images)")
        g = torch.Generator().manual_seed(self.seed * 7919 + len(self.curve) + len(images))
        while True:
            order = torch.arange(len(images)) if first else torch.randperm(len(images), generator=g)
            for s in range(0, len(order) - batch + 1 if len(order) >= batch else 1, batch):
                idx = order[s:s + batch] if not first else order[:batch]
                ps = [prompts[int(i)] for i in idx]
                yield self.latents(images[idx].to(self.device)), ps, self.text(ps)

    # --- losses and sampling helpers ---------------------------------------------------------
    def timesteps(self, n: int) -> Tensor:
        return torch.randint(0, self.model.num_timesteps, (n,), device=self.device)

    def q_sample(self, z0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return latent.q_sample(self.alphas_cumprod, z0, t, eps)

    def eps(self, unet: nn.Module, z: Tensor, t: Tensor, e: Tensor) -> Tensor:
        return latent.eps_pred(unet, z, t, e)

    def ldm_loss(self, unet: nn.Module, z0: Tensor, e: Tensor, t: Tensor | None = None,
                 eps: Tensor | None = None) -> Tensor:
        """SD's element-mean loss mean((ε − ε_θ(z_t, t, e))²)."""
        return latent.ldm_loss(unet, self.alphas_cumprod, z0, e, t, eps)

    def guided_eps(self, unet: nn.Module, z: Tensor, t, e_c: Tensor, e_u: Tensor, s: float) -> Tensor:
        return latent.guided_eps(unet, z, t, e_c, e_u, s)

    def initial_latents(self, n: int) -> Tensor:
        return torch.randn((n, *self.model.latent_shape(self.profile.px)), device=self.device)

    def ddim_partial(self, unet: nn.Module, e_c: Tensor, s: float, steps: int, stop_after: int,
                     z: Tensor | None = None) -> Tensor:
        """Guided DDIM (η 0) with ``unet`` from fresh noise, returning the latent after step ``stop_after``."""
        z = self.initial_latents(e_c.shape[0]) if z is None else z
        with eval_mode(unet):
            return latent.ddim_sample(self.model, unet, z, e_c, self.text("", e_c.shape[0]), s, steps, stop_after)

    def ddim_timesteps(self, steps: int) -> Tensor:
        return self.model.ddim(steps).timesteps

    # --- optimisation ------------------------------------------------------------------------
    def optimizer(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8, weight_decay: float = 0.0, kind: str = "adam") -> torch.optim.Optimizer:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
        params = list(params)
        self.record(optimizer=kind, lr=lr, weight_decay=weight_decay)
        return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def steps(self, n: int) -> Iterator[int]:
        """The budgeted loop with a progress bar; probes before the first iteration, every
        ``n / n_probes`` iterations and after the last, excluded from the measured cost."""
        if self.setup_seconds is None:
            self.setup_seconds = self.stopwatch.elapsed
        every = max(1, n // self.profile.n_probes) if self.profile.n_probes > 0 else 0
        self._probe()
        bar = tqdm(range(n), desc=self._label, leave=False, disable=not self._progress, dynamic_ncols=True)
        for i in bar:
            yield i
            self.iterations_run += 1
            if i + 1 == n or (every and (i + 1) % every == 0):
                self._probe()

    @contextlib.contextmanager
    def unmeasured(self) -> Iterator[None]:
        mem = self._memory.paused() if self._memory is not None else contextlib.nullcontext()
        with self.stopwatch.paused(), self.counts.paused(), mem, torch.random.fork_rng(
                devices=[self.device] if self.device.type == "cuda" else []):
            yield

    def _probe(self) -> None:
        if self._probe_fn is None or self._probe_net is None:
            return
        if self.curve and self.curve[-1]["iter"] == self.iterations_run:
            return
        point = {"iter": self.iterations_run, "unlearn_s": self.stopwatch.elapsed,
                 "grad_steps": self.counts.optimizer_steps, "backward_passes": self.counts.backward_passes}
        t0 = time.perf_counter()
        with self.unmeasured():
            values = self._probe_fn(self.sampler(self._probe_net))
        self.probe_seconds += time.perf_counter() - t0
        self.curve.append({**point, "kind": "probe", **values})

    # --- outputs -----------------------------------------------------------------------------
    def sampler(self, unet: nn.Module, weights: str = "final") -> PromptSampler:
        p = self.profile
        return PromptSampler(self.model, unet, p.sampler_steps, p.guidance, p.px, weights, p.eval_batch)

    def skip(self, reason: str) -> None:
        raise SkipCell(reason)
