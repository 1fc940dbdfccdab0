"""``UnlearnContext``: everything a method may use, handed out by the driver.

Models come from the context so the driver can count their forward and backward passes;
optimizers come from it so their steps are counted; the loop comes from :meth:`steps` so the
driver can show progress, enforce the budget and run cheap probes whose cost is excluded from the
unlearning time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.assets import Assets
from bench.data import batch_stream
from bench.diffusion import Diffusion
from bench.generators import DiffusionSampler, Generator, OneStepGenerator
from bench.measure import Counts, Stopwatch
from bench.nets import CondUNet
from bench.tasks import split_by_class

ProbeFn = Callable[[Generator], dict[str, float]]


class UnlearnContext:
    def __init__(self, assets: Assets, forget_class: int, cover_class: int, seed: int, counts: Counts,
                 stopwatch: Stopwatch, probe_fn: ProbeFn | None = None, n_probes: int = 0,
                 progress: bool = True, label: str = "") -> None:
        self.assets = assets
        self.task = assets.task
        self.profile = assets.profile
        self.device: torch.device = assets.device
        self.diffusion: Diffusion = assets.diffusion
        self.forget_class = forget_class
        self.cover_class = cover_class
        self.num_classes = assets.task.num_classes
        self.remain_classes = [c for c in range(self.num_classes) if c != forget_class]
        self.seed = seed
        self.image_shape = assets.image_shape
        self.counts = counts
        self.stopwatch = stopwatch
        self._probe_fn = probe_fn
        self._n_probes = n_probes
        self._progress = progress
        self._label = label
        self._hooks: list = []
        self._default_probe_net: nn.Module | None = None
        self._stream_seed = seed * 7919
        s = assets.splits
        self._xf, self._yf, self._xr, self._yr = split_by_class(s.train_x, s.train_y, forget_class)
        self.curve: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.setup_seconds: float | None = None
        self.iterations_run = 0

    # --- models ------------------------------------------------------------------------------
    def _track(self, net: nn.Module, name: str) -> nn.Module:
        self._hooks += self.counts.attach(net, name)
        return net

    def base_model(self, weights: str = "raw", name: str = "model", trainable: bool = True) -> CondUNet:
        """A fresh copy of the pretrained base model on the device (``raw`` or ``ema`` weights).

        With ``trainable=False`` the copy is frozen (``requires_grad=False``) and in ``eval()``; it
        can still be differentiated *through*. The first trainable model handed out is what the
        default probe samples.
        """
        net = self.assets.base(weights)
        if trainable:
            net.train()
            if self._default_probe_net is None:
                self._default_probe_net = net
        else:
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
        return self._track(net, name)

    def fresh_model(self, name: str = "model") -> CondUNet:
        """The base architecture at a fresh random initialisation (Retrain), seeded by the cell seed."""
        torch.manual_seed(self.seed)
        net = CondUNet(self.task.unet_config, self.num_classes).to(self.device).train()
        if self._default_probe_net is None:
            self._default_probe_net = net
        return self._track(net, name)

    def clone(self, net: CondUNet, name: str, trainable: bool = True) -> CondUNet:
        """A tracked deep copy of a model the method already holds."""
        twin = net.clone()
        if not trainable:
            twin.eval()
            for p in twin.parameters():
                p.requires_grad_(False)
        return self._track(twin, name)

    # --- data --------------------------------------------------------------------------------
    def forget_data(self) -> tuple[Tensor, Tensor]:
        """All real training images of the forget class (D_f), in model space, on the device."""
        return self._xf.to(self.device), self._yf.to(self.device)

    def remain_data(self) -> tuple[Tensor, Tensor]:
        """All real training images of the other classes (D_r)."""
        return self._xr.to(self.device), self._yr.to(self.device)

    def _next_seed(self) -> int:
        self._stream_seed += 1
        return self._stream_seed

    def forget_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite shuffled batches of D_f (labels are the forget class)."""
        return batch_stream(self._xf, self._yf, batch_size, self._next_seed(), self.device)

    def remain_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite shuffled batches of D_r with their true labels."""
        return batch_stream(self._xr, self._yr, batch_size, self._next_seed(), self.device)

    def remain_labels(self, batch_size: int) -> Iterator[Tensor]:
        """Infinite batches of D_r's labels only (data-free methods draw the label distribution)."""
        for _, y in self.remain_batches(batch_size):
            yield y

    def labels(self, cls: int, n: int) -> Tensor:
        return torch.full((n,), cls, dtype=torch.long, device=self.device)

    # --- optimisation ------------------------------------------------------------------------
    def optimizer(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8, weight_decay: float = 0.0, kind: str = "adam") -> torch.optim.Optimizer:
        """Adam (default) or AdamW; every ``step()`` is counted by the driver."""
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
        return cls(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def steps(self, n: int, probe: Callable[[], Generator] | None = None) -> Iterator[int]:
        """The budgeted loop: yields ``0 .. n-1`` with a progress bar.

        Probes run before the first iteration, every ``n / n_probes`` iterations and after the last;
        ``probe`` returns the generator to probe (default: the task sampler over the first trainable
        model). Probe time, forward passes and steps are excluded from the measurements.
        """
        if self.setup_seconds is None:
            self.setup_seconds = self.stopwatch.elapsed
        make = probe or self._default_probe
        every = max(1, n // self._n_probes) if self._n_probes > 0 else 0
        self._probe(self.iterations_run, make)
        bar = tqdm(range(n), desc=self._label, leave=False, disable=not self._progress, dynamic_ncols=True)
        for i in bar:
            yield i
            self.iterations_run += 1
            if i + 1 == n or (every and (i + 1) % every == 0):
                self._probe(self.iterations_run, make)

    def _default_probe(self) -> Generator:
        if self._default_probe_net is None:
            raise RuntimeError("no trainable model to probe; pass probe= to ctx.steps()")
        return self.sampler(self._default_probe_net)

    def _probe(self, iteration: int, make: Callable[[], Generator]) -> None:
        if self._probe_fn is None:
            return
        if self.curve and self.curve[-1]["iter"] == iteration:
            return
        with self.stopwatch.paused(), self.counts.paused(), torch.random.fork_rng(devices=self._rng_devices()):
            values = self._probe_fn(make())
        self.curve.append({"iter": iteration, "unlearn_s": self.stopwatch.elapsed,
                           "grad_steps": self.counts.optimizer_steps,
                           "backward_passes": self.counts.backward_passes, **values})

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    def log(self, **values: float) -> None:
        """Record scalars (losses, mask sparsity, ...) for this iteration; stored with the run."""
        row = {"iter": self.iterations_run}
        for k, v in values.items():
            row[k] = float(v.detach()) if isinstance(v, Tensor) else v
        self.logs.append(row)

    # --- outputs -----------------------------------------------------------------------------
    def sampler(self, net: nn.Module, weights: str = "raw") -> DiffusionSampler:
        """The task profile's evaluation sampler over ``net``."""
        p = self.profile
        return DiffusionSampler(net, self.diffusion, p.sampler_steps, p.guidance, p.eta, self.image_shape, weights)

    def one_step(self, net: nn.Module, fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
                 weights: str = "ema") -> OneStepGenerator:
        """A one-step generator: ``fn(net, z, labels)`` maps N(0, I) noise to images in [-1, 1]."""
        return OneStepGenerator(net, fn, self.image_shape, weights)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
