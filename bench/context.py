"""``UnlearnContext``: everything a method may use, handed out by the driver, for class and concept tasks alike.

Models come from the context so the driver can count their forward and backward passes; optimizers come
from it so their steps are counted; the loop comes from :meth:`UnlearnContext.steps` so the driver can show
progress, enforce the budget and run probes whose cost is excluded from the unlearning time. What differs
between a class-conditional pixel DDPM and a text-to-image latent model (conditioning, encoder, schedule,
loss reduction, guidance form, data, sampler) comes from the task's model family
(:mod:`bench.models.family`), so a method written against this context runs on both.
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

from bench.core.errors import BenchError
from bench.core.measure import Counts, PeakMemory, Stopwatch
from bench.models.generators import OneStepGenerator
from bench.models.nets import clone_without_hooks


class Probe(Protocol):
    """What the driver probes during unlearning: ``full`` (UA, and a probe FID where the task has one, at
    the scheduled probes) and ``ua`` (UA alone, on the same noise; the bisection refinement)."""

    def full(self, gen: Any) -> dict[str, float]: ...

    def ua(self, gen: Any) -> float: ...


class SkipCell(Exception):
    """Raised (through :meth:`UnlearnContext.skip`) by a method that cannot run here, e.g. SFD on a concept task
    without a one-step generator: the cell is written with ``status="skipped"`` and the reason."""


def snapshot_every(n: int, fraction: float) -> int:
    """Iterations between weight snapshots: ``floor(fraction * n)``, at least 1."""
    return max(1, int(math.floor(fraction * n)))


class RunRecords:
    """What the context keeps about a run: facts for the row (``record``), per-iteration scalars (``log``)
    and the counting hooks it attached (removed by ``close``)."""

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
    def __init__(self, family: Any, seed: int, counts: Counts, stopwatch: Stopwatch, probe_fn: Probe | None = None,
                 n_probes: int = 0, progress: bool = True, label: str = "", memory: PeakMemory | None = None,
                 ua_target: float | None = None, resolution: float = 0.02, one_step_generator: str | None = None
                 ) -> None:
        self.family = family
        self.kind: str = family.kind
        self.task, self.profile, self.device = family.task, family.profile, family.device
        self.forget_class, self.cover_class = family.forget, family.cover
        self.num_classes = family.task.num_classes
        self.remain_classes = [c for c in range(self.num_classes) if c != self.forget_class]
        self.image_shape = family.image_shape  # the model's input: pixels (class tasks) or latents
        self.pixel_shape = family.pixel_shape
        self.T: int = family.T
        self.weights_evaluated: str = family.weights_evaluated
        self.seed = seed
        self.one_step_generator = one_step_generator
        self.counts, self.stopwatch = counts, stopwatch
        self._probe_fn, self._n_probes, self._memory = probe_fn, n_probes, memory
        self._ua_target, self._resolution = ua_target, resolution
        self._snapshots: list[dict[str, Any]] = []
        self._scratch: dict[int, nn.Module] = {}
        self._target_found = False
        self._progress, self._label = progress, label
        self._hooks: list = []
        self._default_probe_net: nn.Module | None = None
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
        for net, name in family.tracked():
            self._track(net, name)

    # --- kind-specific handles -----------------------------------------------------------------
    @property
    def assets(self) -> Any:
        return self.family.assets

    @property
    def diffusion(self):
        """The pixel DDPM's schedule and helpers (class tasks; a method written for both kinds of task uses
        the family's calls below instead)."""
        if self.kind != "class":
            raise BenchError("ctx.diffusion is the pixel DDPM of class tasks; on a concept task use ctx.loss, "
                             "ctx.eps, ctx.q_sample, ctx.timesteps and ctx.guided_eps")
        return self.family.diffusion

    # --- models ------------------------------------------------------------------------------
    def _track(self, net: nn.Module, name: str) -> nn.Module:
        self._hooks += self.counts.attach(net, name)
        return net

    def base_model(self, weights: str | None = None, name: str = "model", trainable: bool = True) -> nn.Module:
        """A fresh copy of the pretrained base model on the device (class tasks: ``raw`` or ``ema`` weights;
        default ``raw``).

        With ``trainable=False`` the copy is frozen (``requires_grad=False``) and in ``eval()``; it can still be
        differentiated *through*. The first trainable model handed out is what the default probe samples."""
        net = self.family.base(weights or ("raw" if self.kind == "class" else self.weights_evaluated))
        if trainable:
            net.train().requires_grad_(True)
            if self._default_probe_net is None:
                self._default_probe_net = net
        else:
            net.eval().requires_grad_(False)
        return self._track(net, name)

    def counted_backward(self, loss: Tensor, name: str = "model") -> Tensor:
        """``loss``, marked so that its backward counts as one backward pass of the network ``name``: for a loss
        computed from the network's inner activations (FMN's attention maps) rather than its output."""
        self.counts.count_backward(loss, name)
        return loss

    def retrained_model(self, steps: int, weights: str = "raw") -> nn.Module:
        """The base architecture trained from scratch on D_r with the base model's recipe and seed
        (``steps`` iterations), built once per (base seed, forget class, recipe) in the asset cache.

        Its cost (wall seconds, optimizer steps, backward passes, peak memory) was measured by the
        harness when it was built and is carried into this run's row, whether the cache was hit or
        not; the build itself is excluded from this run's own measurements."""
        reason = getattr(self.family, "no_retrain", "")  # a task whose base model the harness cannot train
        if reason:
            self.skip(reason)
        with self.unmeasured():
            net, meta = self.assets.retrain(self.forget_class, steps, weights)
        self.carried = {"seconds": meta["train_seconds"], "optimizer_steps": meta["steps"],
                        "backward_passes": meta["steps"], "peak_mem_mb": meta.get("peak_mem_mb", math.nan)}
        weight_file = next(f for f in sorted(meta["files"])
                           if f.startswith(f"{weights}/") and f.endswith(".safetensors"))
        self.record(retrain_hash=meta["files"][weight_file][:16])
        return self._track(net.to(self.device), "model")

    def clone(self, net: nn.Module, name: str, trainable: bool = True) -> nn.Module:
        """A tracked deep copy of a model the method already holds (without the original's hooks: counting
        hooks belong to the copy's own tracking)."""
        twin = clone_without_hooks(net)
        if not trainable:
            twin.eval()
            for p in twin.parameters():
                p.requires_grad_(False)
        return self._track(twin, name)

    def param_set(self, net: nn.Module, name: str, auto: str = "full") -> list[nn.Parameter]:
        """The parameters a method trains: ``full`` (every one), ``auto`` (the task's choice for the method
        ``auto`` names: ESD-u or ESD-x by concept, SA's ``noxattn`` for nudity) or, on text-to-image UNets,
        ``xattn``, ``noxattn``, ``esd-u-2024``. Only they keep ``requires_grad``."""
        resolved = self.family.resolve_param_set(name, auto)
        chosen = self.family.param_set(net, resolved)
        keep = {id(p) for _, p in chosen}
        for p in net.parameters():
            p.requires_grad_(id(p) in keep)
        params = [p for _, p in chosen]
        if self.kind == "concept" or resolved != "full":  # class rows train every weight, as they always did
            self.record(param_set=resolved, trainable_params=sum(p.numel() for p in params))
        return params

    # --- data ----------------------------------------------------------------------------------
    def forget_data(self) -> tuple[Tensor, Tensor]:
        """All of D_f and its conditioning (class tasks: images in model space and labels; concept tasks:
        uint8 images, to pass through :meth:`encode`, and prompt embeddings)."""
        return self.family.forget_data()

    def remain_data(self) -> tuple[Tensor, Tensor]:
        """All of D_r with each image's own conditioning."""
        return self.family.remain_data()

    def forget_batches(self, batch_size: int, first: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite shuffled batches ``(x0, c)`` of D_f, encoded (pixels or VAE latents), with the forget
        condition; ``first`` always takes the first ``batch_size`` images (a reference quirk)."""
        return self.family.forget_batches(batch_size, first)

    def remain_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite shuffled batches ``(x0, c)`` of D_r, each image with its own condition."""
        return self.family.remain_batches(batch_size)

    def remain_groups(self) -> Tensor:
        """The class (or, on concept tasks, the caption index) of each image of :meth:`remain_data`."""
        return self.family.remain_groups()

    def remain_labels(self, batch_size: int) -> Iterator[Tensor]:
        """Infinite batches of D_r's labels only (data-free methods draw the label distribution)."""
        for _, y in self.remain_batches(batch_size):
            yield y

    def surrogate_images(self) -> Tensor:
        """Images standing in for the forget condition (SA): the cover class's or the surrogate prompt's."""
        return self.family.surrogate_images()

    def labels(self, cls: int, n: int) -> Tensor:
        return torch.full((n,), cls, dtype=torch.long, device=self.device)

    # --- conditioning, encoder, schedule, losses (the family's) ------------------------------
    def cond(self, role: str, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` copies of a condition: ``forget``, ``cover``, ``erase`` (ESD), ``sa_forget`` (SA) or ``null``."""
        return self.family.cond(role, n, generator)

    def text(self, prompts: list[str] | tuple[str, ...] | str, n: int | None = None) -> Tensor:
        """Text-to-image tasks: the frozen text encoder's embeddings (B, 77, D) of any prompts."""
        return self._text_family("text").text(prompts, n)

    def token_lengths(self, prompts: list[str] | tuple[str, ...]) -> list[int]:
        """Text-to-image tasks: each prompt's token count with its start and end tokens."""
        return self._text_family("token_lengths").token_lengths(prompts)

    def text_encoder(self, name: str = "text_encoder_unlearned") -> nn.Module:
        """Text-to-image tasks: a trainable, tracked copy of the frozen text encoder."""
        return self._track(self._text_family("text_encoder").text_encoder(), name)

    def token_ids(self, prompts: list[str] | tuple[str, ...]) -> Tensor:
        """Text-to-image tasks: token ids (B, 77) of prompts as the text encoder reads them."""
        return self._text_family("token_ids").token_ids(prompts)

    def concept_mask(self, prompts: list[str] | tuple[str, ...], concept: str, with_end: bool = False) -> Tensor:
        """Text-to-image tasks: (B, 77) mask of the positions of ``concept``'s tokens in each prompt, and with
        ``with_end`` of every end-of-text token (SD v1.x pads with it)."""
        return self._text_family("concept_mask").concept_mask(prompts, concept, with_end)

    @property
    def prompts(self) -> Any:
        """Text-to-image tasks: the cell's prompts (``erase``, ``forget``, ``cover``, ``remain``, ...)."""
        return self._text_family("prompts").prompts

    def _text_family(self, what: str) -> Any:
        if self.kind != "concept":
            raise BenchError(f"ctx.{what} is for text-to-image (concept) tasks; this is a {self.kind} task")
        return self.family

    def encode(self, x: Tensor) -> Tensor:
        """Model input of images: the identity (class tasks) or VAE latents (concept tasks)."""
        return self.family.encode(x)

    def timesteps(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training timesteps: antithetic (class tasks, the reference's draw) or uniform (concept tasks)."""
        return self.family.timesteps(n, generator)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return self.family.q_sample(x0, t, noise)

    def eps(self, net: nn.Module, x: Tensor, t: Tensor, c: Tensor, p_drop: float = 0.0) -> Tensor:
        """The noise prediction; ``p_drop`` replaces each condition by ∅ with that probability."""
        return self.family.eps(net, x, t, c, p_drop)

    def loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
        """The task's denoising loss (class: L_simple, summed over pixels; concept: SD's element mean)."""
        return self.family.loss(net, x0, c, p_drop, t, noise)

    def per_sample(self, sq: Tensor) -> Tensor:
        """The loss's reduction of a squared error to one value per sample (sum over pixels, or mean over
        latent elements)."""
        return self.family.per_sample(sq)

    def per_sample_loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0, t: Tensor | None = None,
                        noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        return self.family.per_sample_loss(net, x0, c, p_drop, t, noise, generator)

    def guided_eps(self, net: nn.Module, x: Tensor, t: Tensor, c: Tensor, w: float) -> Tensor:
        """Classifier-free guidance ``(1 + w) ε(c) − w ε(∅)`` (SD's ``s`` form with ``s = 1 + w``)."""
        return self.family.guided_eps(net, x, t, c, w)

    def initial(self, n: int) -> Tensor:
        """Fresh N(0, I) noise of the model's input shape."""
        return self.family.initial(n)

    def ddim_timesteps(self, steps: int) -> Tensor:
        return self.family.ddim_timesteps(steps)

    def ddim_partial(self, net: nn.Module, c: Tensor, w: float, steps: int, stop_after: int,
                     z: Tensor | None = None) -> Tensor:
        """Guided DDIM (η 0) with ``net`` from fresh noise, returning the input after step ``stop_after``."""
        return self.family.ddim_partial(net, c, w, steps, stop_after, z)

    # --- optimisation ------------------------------------------------------------------------
    def optimizer(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8, weight_decay: float = 0.0, kind: str = "adam") -> torch.optim.Optimizer:
        """Adam (default) or AdamW; every ``step()`` is counted by the driver."""
        if kind not in ("adam", "adamw"):
            raise BenchError(f"optimizer must be 'adam' or 'adamw', not {kind!r}")
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
        return cls(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def steps(self, n: int, probe: Callable[[], Any] | None = None) -> Iterator[int]:
        """The budgeted loop: yields ``0 .. n-1`` with a progress bar.

        Probes (UA, and a probe FID where the task has one) run before the first iteration, every
        ``n / n_probes`` iterations and after the last. Between them the weights the probe would sample are
        snapshotted every ``snapshot_every(n, resolution)`` iterations; when a probe first reaches the UA
        target, the snapshots since the last probe that missed it are bisected with UA-only probes, so the
        time to the target is known to one snapshot interval. ``probe`` returns the generator to probe
        (default: the task sampler over the first trainable model). Probe, snapshot and bisection time,
        forward passes, steps and memory are all excluded from the measurements.
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

    def skip(self, reason: str) -> None:
        """Stop here: this method cannot run on this task or machine; the cell is written as skipped."""
        raise SkipCell(reason)

    def _default_probe(self) -> Any:
        if self._default_probe_net is None:
            raise RuntimeError("no trainable model to probe; pass probe= to ctx.steps()")
        return self.sampler(self._default_probe_net)

    @contextlib.contextmanager
    def unmeasured(self) -> Iterator[None]:
        """Nothing inside counts: time, steps, passes, memory; the method's RNG streams are untouched."""
        mem = self._memory.paused() if self._memory is not None else contextlib.nullcontext()
        devices = [self.device] if self.device.type == "cuda" else []
        with self.stopwatch.paused(), self.counts.paused(), mem, torch.random.fork_rng(devices=devices):
            yield

    def _point(self, iteration: int) -> dict[str, Any]:
        return {"iter": iteration, "unlearn_s": self.stopwatch.elapsed, "grad_steps": self.counts.optimizer_steps,
                "backward_passes": self.counts.backward_passes}

    def _probe(self, iteration: int, make: Callable[[], Any]) -> None:
        if self._probe_fn is None:
            return
        if self.curve and self.curve[-1]["iter"] == iteration:
            return
        point = self._point(iteration)
        t0 = time.perf_counter()
        with self.unmeasured():
            values = self._probe_fn.full(make())
        self.probe_seconds += time.perf_counter() - t0
        self.curve.append({**point, "kind": "probe", **values})
        if self._ua_target is None or self._target_found:
            return
        if values.get("ua", -1.0) >= self._ua_target:
            self._target_found = True
            t0 = time.perf_counter()
            with self.unmeasured():
                self._bisect(make)
            self.refine_seconds += time.perf_counter() - t0
        self._snapshots.clear()

    def _snapshot(self, make: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        point = self._point(self.iterations_run)
        with self.unmeasured():
            gen = make()
            point["state"] = {k: v.detach().to("cpu", copy=True) for k, v in gen.net.state_dict().items()}
            encoder = getattr(gen, "text_encoder", None)
            if encoder is not None:  # a method that trains the text encoder (AdvUnlearn)
                point["text_state"] = {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}
        self._snapshots.append(point)
        self.refine_seconds += time.perf_counter() - t0

    def _bisect(self, make: Callable[[], Any]) -> None:
        """First snapshot reaching the target between the last miss and the probe that hit: each
        UA-only probe halves the candidates (assumes UA crosses the target once in the window)."""
        cands = self._snapshots
        lo, hi = -1, len(cands)  # cands[lo] missed (or is the last probe), cands[hi] hit (the probe)
        gen = make()
        scratch = self._scratch.get(id(gen.net))
        if scratch is None and cands:
            scratch = gen.net.clone() if hasattr(gen.net, "clone") else copy.deepcopy(gen.net)
            self._scratch[id(gen.net)] = scratch
        encoder = getattr(gen, "text_encoder", None)
        text_scratch = copy.deepcopy(encoder) if encoder is not None and cands else None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            scratch.load_state_dict(cands[mid]["state"])
            view = copy.copy(gen)
            view.net = scratch
            if text_scratch is not None:
                text_scratch.load_state_dict(cands[mid]["text_state"])
                view.text_encoder = text_scratch
            ua = self._probe_fn.ua(view)
            self.refine_probes += 1
            point = {k: v for k, v in cands[mid].items() if k not in ("state", "text_state")}
            self.curve.append({**point, "kind": "refine", "ua": ua})
            if ua >= self._ua_target:
                hi = mid
            else:
                lo = mid
        self.curve.sort(key=lambda p: p["iter"])

    # --- outputs -----------------------------------------------------------------------------
    def sampler(self, net: nn.Module, weights: str | None = None, text_encoder: nn.Module | None = None) -> Any:
        """The task profile's evaluation sampler over ``net`` (a guided diffusion sampler, or for concept
        tasks a prompt sampler that decodes with the VAE, and encodes prompts with ``text_encoder`` when a
        method trained one)."""
        weights = weights or ("raw" if self.kind == "class" else "final")
        if text_encoder is None:
            return self.family.sampler(net, weights)
        return self._text_family("sampler(text_encoder=)").sampler(net, weights, text_encoder)

    def one_step(self, net: nn.Module, fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
                 weights: str = "ema") -> OneStepGenerator:
        """A one-step generator: ``fn(net, z, labels)`` maps N(0, I) noise to images in [-1, 1] (on a latent task
        to latents, which the family's VAE decodes)."""
        decode = getattr(self.family, "decode_latents", None)
        return OneStepGenerator(net, fn, self.image_shape, weights, decode=decode)

