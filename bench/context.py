"""``UnlearnContext``: everything a method may use, handed out by the driver.

Models come from the context so the driver can count their forward and backward passes;
optimizers come from it so their steps are counted; the loop comes from :meth:`steps` so the
driver can show progress, enforce the budget and run cheap probes whose cost is excluded from the
unlearning time.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.assets import Assets
from bench.data import batch_stream
from bench.diffusion import Diffusion
from bench.generators import DiffusionSampler, Generator, OneStepGenerator
from bench.measure import Counts, PeakMemory, Stopwatch
from bench.nets import CondUNet
from bench.tasks import split_by_class


class Probe(Protocol):
    """What the driver probes during unlearning: ``full`` (UA and a probe FID, at the scheduled
    probes) and ``ua`` (UA alone, on the same forget-class noise; the bisection refinement)."""

    def full(self, gen: Generator) -> dict[str, float]: ...

    def ua(self, gen: Generator) -> float: ...


def snapshot_every(n: int, fraction: float) -> int:
    """Iterations between weight snapshots: ``floor(fraction * n)``, at least 1."""
    return max(1, int(math.floor(fraction * n)))


class RunRecords:
    """What both contexts keep about a run: facts for the row (``record``), per-iteration scalars
    (``log``) and the counting hooks they attached (removed by ``close``)."""

    info: dict[str, Any]
    iterations_run: int
    _logs: list[dict[str, Any]]
    _hooks: list

    def record(self, **values: Any) -> None:
        """Facts about this run that belong in its result row (e.g. a mask's fraction, an effective
        EMA decay); stored as ``info_<key>``."""
        for k, v in values.items():
            self.info[k] = float(v.detach()) if isinstance(v, Tensor) else v

    def log(self, **values: float) -> None:
        """Record scalars (losses, mask sparsity, ...) for this iteration; stored with the run.

        Tensors stay on their device until :attr:`logs` is read, so logging never makes the host wait
        for the GPU inside the unlearning loop."""
        row = {"iter": self.iterations_run}
        for k, v in values.items():
            row[k] = v.detach() if isinstance(v, Tensor) else v
        self._logs.append(row)

    @property
    def logs(self) -> list[dict[str, Any]]:
        for row in self._logs:
            for k, v in row.items():
                if isinstance(v, Tensor):
                    row[k] = float(v)
        return self._logs

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


class UnlearnContext(RunRecords):
    def __init__(self, assets: Assets, forget_class: int, cover_class: int, seed: int, counts: Counts,
                 stopwatch: Stopwatch, probe_fn: Probe | None = None, n_probes: int = 0,
                 progress: bool = True, label: str = "", memory: PeakMemory | None = None,
                 ua_target: float | None = None, resolution: float = 0.02) -> None:
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
        self._memory = memory
        self._ua_target = ua_target
        self._resolution = resolution
        self._snapshots: list[dict[str, Any]] = []
        self._scratch: dict[int, nn.Module] = {}
        self._target_found = False
        self._last_miss: dict[str, Any] | None = None
        self._progress = progress
        self._label = label
        self._hooks: list = []
        self._default_probe_net: nn.Module | None = None
        self._stream_seed = seed * 7919
        s = assets.splits
        self._xf, self._yf, self._xr, self._yr = split_by_class(s.train_x, s.train_y, forget_class)
        self.curve: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []
        self.setup_seconds: float | None = None
        self.iterations_run = 0
        self.info: dict[str, Any] = {}  # facts a method reports about itself (mask fraction, EMA decay)
        self.carried: dict[str, float] = {}  # cost of a cached build (Retrain), measured when it was built
        self.probe_seconds = 0.0  # wall time of the scheduled probes (excluded from unlearn_s)
        self.refine_seconds = 0.0  # wall time of snapshots and bisection probes (excluded too)
        self.refine_probes = 0
        self.snapshot_interval: int | None = None

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

    def retrained_model(self, steps: int, weights: str = "raw") -> CondUNet:
        """The base architecture trained from scratch on D_r with the base model's recipe and seed
        (``steps`` iterations), built once per (base seed, forget class, recipe) in the asset cache.

        Its cost (wall seconds, optimizer steps, backward passes, peak memory) was measured by the
        harness when it was built and is carried into this run's row, whether the cache was hit or
        not; the build itself is excluded from this run's own measurements."""
        with self._unmeasured():
            net, meta = self.assets.retrain(self.forget_class, steps, weights)
        self.carried = {"seconds": meta["train_seconds"], "optimizer_steps": meta["steps"],
                        "backward_passes": meta["steps"], "peak_mem_mb": meta.get("peak_mem_mb", math.nan)}
        weight_file = next(f for f in sorted(meta["files"])
                           if f.startswith(f"{weights}/") and f.endswith(".safetensors"))
        self.record(retrain_hash=meta["files"][weight_file][:16])
        return self._track(net.to(self.device), "model")

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

        Probes (UA and a probe FID) run before the first iteration, every ``n / n_probes``
        iterations and after the last. Between them the weights the probe would sample are
        snapshotted every ``snapshot_every(n, resolution)`` iterations; when a probe first reaches
        the UA target, the snapshots since the last probe that missed it are bisected with UA-only
        probes, so the time to the target is known to one snapshot interval. ``probe`` returns the
        generator to probe (default: the task sampler over the first trainable model). Probe,
        snapshot and bisection time, forward passes, steps and memory are all excluded from the
        measurements.
        """
        if self.setup_seconds is None:
            self.setup_seconds = self.stopwatch.elapsed
        make = probe or self._default_probe
        every = max(1, n // self._n_probes) if self._n_probes > 0 else 0
        snap = snapshot_every(n, self._resolution) if every and self._ua_target is not None else 0
        self.snapshot_interval = snap or None
        self._probe(self.iterations_run, make)
        bar = tqdm(range(n), desc=self._label, leave=False, disable=not self._progress, dynamic_ncols=True)
        for i in bar:
            yield i
            self.iterations_run += 1
            if i + 1 == n or (every and (i + 1) % every == 0):
                self._probe(self.iterations_run, make)
            elif snap and not self._target_found and (i + 1) % snap == 0:
                self._snapshot(make)

    def _default_probe(self) -> Generator:
        if self._default_probe_net is None:
            raise RuntimeError("no trainable model to probe; pass probe= to ctx.steps()")
        return self.sampler(self._default_probe_net)

    @contextlib.contextmanager
    def _unmeasured(self) -> Iterator[None]:
        """Nothing inside counts: time, steps, passes, memory; the method's RNG streams are untouched."""
        mem = self._memory.paused() if self._memory is not None else contextlib.nullcontext()
        with self.stopwatch.paused(), self.counts.paused(), mem, \
                torch.random.fork_rng(devices=self._rng_devices()):
            yield

    def _point(self, iteration: int) -> dict[str, Any]:
        return {"iter": iteration, "unlearn_s": self.stopwatch.elapsed, "grad_steps": self.counts.optimizer_steps,
                "backward_passes": self.counts.backward_passes}

    def _probe(self, iteration: int, make: Callable[[], Generator]) -> None:
        if self._probe_fn is None:
            return
        if self.curve and self.curve[-1]["iter"] == iteration:
            return
        point = self._point(iteration)
        t0 = time.perf_counter()
        with self._unmeasured():
            values = self._probe_fn.full(make())
        self.probe_seconds += time.perf_counter() - t0
        self.curve.append({**point, "kind": "probe", **values})
        if self._ua_target is None or self._target_found:
            return
        if values.get("ua", -1.0) >= self._ua_target:
            self._target_found = True
            t0 = time.perf_counter()
            with self._unmeasured():
                self._bisect(make)
            self.refine_seconds += time.perf_counter() - t0
        else:
            self._last_miss = point
        self._snapshots.clear()

    def _snapshot(self, make: Callable[[], Generator]) -> None:
        t0 = time.perf_counter()
        point = self._point(self.iterations_run)
        with self._unmeasured():
            net = make().net
            point["state"] = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        self._snapshots.append(point)
        self.refine_seconds += time.perf_counter() - t0

    def _bisect(self, make: Callable[[], Generator]) -> None:
        """First snapshot reaching the target between the last miss and the probe that hit: each
        UA-only probe halves the candidates (assumes UA crosses the target once in the window)."""
        cands = self._snapshots
        lo, hi = -1, len(cands)  # cands[lo] missed (or is the last probe), cands[hi] hit (the probe)
        gen = make()
        scratch = self._scratch.get(id(gen.net))
        if scratch is None and cands:
            scratch = gen.net.clone() if hasattr(gen.net, "clone") else copy.deepcopy(gen.net)
            self._scratch[id(gen.net)] = scratch
        while hi - lo > 1:
            mid = (lo + hi) // 2
            scratch.load_state_dict(cands[mid]["state"])
            view = copy.copy(gen)
            view.net = scratch
            ua = self._probe_fn.ua(view)
            self.refine_probes += 1
            point = {k: v for k, v in cands[mid].items() if k != "state"}
            self.curve.append({**point, "kind": "refine", "ua": ua})
            if ua >= self._ua_target:
                hi = mid
            else:
                lo = mid
        self.curve.sort(key=lambda p: p["iter"])

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    # --- outputs -----------------------------------------------------------------------------
    def sampler(self, net: nn.Module, weights: str = "raw") -> DiffusionSampler:
        """The task profile's evaluation sampler over ``net``."""
        p = self.profile
        return DiffusionSampler(net, self.diffusion, p.sampler_steps, p.guidance, p.eta, self.image_shape, weights)

    def one_step(self, net: nn.Module, fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
                 weights: str = "ema") -> OneStepGenerator:
        """A one-step generator: ``fn(net, z, labels)`` maps N(0, I) noise to images in [-1, 1]."""
        return OneStepGenerator(net, fn, self.image_shape, weights)
