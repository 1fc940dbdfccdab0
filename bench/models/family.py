"""Model families: what a task's kind of model supplies to a method, so that a method is written once.

A method sees data, conditioning and losses only through the context, which hands these calls to the
task's family:

====================  =========================================  ==============================================
                      :class:`PixelFamily` (class tasks)         ``bench.sd.family.TextFamily`` (concept tasks)
====================  =========================================  ==============================================
conditioning ``c``    a class label; the null class is ∅          a prompt's text embedding; ``""`` is ∅
encoder               identity (images in [-1, 1])               the frozen VAE (``scaling · E(x)``)
schedule              linear β, T = 1000 (protocol §1.2)         SD's scaled-linear β, T = 1000
``loss``              L_simple: sum over pixels, batch mean      SD's element mean
``timesteps``         antithetic U{0..T-1}                       U{0..T-1}
guidance              "(1+w)": (1+w) ε(c) − w ε(∅)               "s" = 1 + w: ε(∅) + s (ε(c) − ε(∅))
====================  =========================================  ==============================================

Both forms of guidance are the same prediction with ``s = 1 + w``; every family call takes ``w``.
Conditioning roles (:meth:`PixelFamily.cond`): ``forget`` (what D_f is conditioned on), ``cover`` (the
relabel target), ``erase`` (ESD's prompt), ``sa_forget`` (SA's forget condition), ``null``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.datasets.streams import batch_stream
from bench.models.diffusion import Diffusion
from bench.models.generators import DiffusionSampler, eval_mode

ROLES = ("forget", "cover", "erase", "sa_forget", "null")


def split_by_class(x: Tensor, y: Tensor, cls: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_f, y_f, x_r, y_r)``: the forget class and everything else."""
    m = y == cls
    return x[m], y[m], x[~m], y[~m]


class PixelOps:
    """The pixel DDPM's operations on given tensors: schedule, noising, the noise prediction (labels, with the
    null class as ∅), the losses and their reduction, guidance, partial DDIM. :class:`PixelFamily` adds the
    task's models and data; helpers that need only these operations accept either."""

    kind = "class"
    guidance_form = "(1+w)"

    def __init__(self, diffusion: Diffusion, image_shape: tuple[int, ...] = ()) -> None:
        self.diffusion = diffusion
        self.T = diffusion.T
        self.device = diffusion.device
        self.image_shape = self.pixel_shape = tuple(image_shape)

    def encode(self, x: Tensor) -> Tensor:
        return x

    def timesteps(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.diffusion.antithetic_t(n, generator)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return self.diffusion.q_sample(x0, t, noise)

    def eps(self, net: nn.Module, x: Tensor, t: Tensor, c: Tensor, p_drop: float = 0.0) -> Tensor:
        return self.diffusion.eps(net, x, t, c, p_drop)

    @staticmethod
    def per_sample(sq: Tensor) -> Tensor:
        """The loss's reduction of a squared error to one value per sample: the sum over pixels."""
        return sq.flatten(1).sum(1)

    def per_sample_loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0, t: Tensor | None = None,
                        noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Sum over pixels of the squared noise error, one value per sample."""
        return self.diffusion.per_sample_loss(net, x0, c, p_drop, t, noise, generator)

    def loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
        """L_simple: sum over pixels, mean over the batch."""
        return self.diffusion.simple_loss(net, x0, c, p_drop, t, noise)

    def guided_eps(self, net: nn.Module, x: Tensor, t: Tensor, c: Tensor, w: float) -> Tensor:
        return self.diffusion.cfg_eps(net, x, t, c, w)

    def initial(self, n: int) -> Tensor:
        return torch.randn((n, *self.image_shape), device=self.device)

    def ddim_timesteps(self, steps: int) -> Tensor:
        """The evaluation sampler's timesteps for ``steps`` steps, first to last (uniform skips)."""
        skip = self.T // steps
        return torch.arange(0, self.T, skip).flip(0)

    @torch.no_grad()
    def ddim_partial(self, net: nn.Module, c: Tensor, w: float, steps: int, stop_after: int,
                     z: Tensor | None = None) -> Tensor:
        """Guided DDIM (η 0) from fresh noise, returning the image after the step of index ``stop_after``."""
        x = self.initial(c.shape[0]) if z is None else z
        d, ts = self.diffusion, self.ddim_timesteps(steps).tolist()
        with eval_mode(net):
            for i, t_i in enumerate(ts):
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                t = torch.full((x.shape[0],), t_i, device=self.device, dtype=torch.long)
                e = d.cfg_eps(net, x, t, c, w)
                ab_t = d.alphas_cumprod[t_i]
                ab_p = d.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0, device=self.device)
                x0 = (x - (1 - ab_t).sqrt() * e) / ab_t.sqrt()
                x = ab_p.sqrt() * x0 + (1 - ab_p).sqrt() * e
                if i >= stop_after:
                    break
        return x


class PixelFamily(PixelOps):
    """A class-conditional DDPM in pixel space over a class task's assets (duck-typed: ``base``,
    ``retrain``, ``splits``, ``diffusion``, ``profile``, ``image_shape``, ``task``, ``device``)."""

    def __init__(self, assets: Any, forget: int, cover: int, seed: int) -> None:
        self._bind(assets, forget, cover)
        s = assets.splits
        self._xf, self._yf, self._xr, self._yr = split_by_class(s.train_x, s.train_y, forget)
        self._stream_seed = seed * 7919

    def _bind(self, assets: Any, forget: int, cover: int) -> None:
        """What every class family knows of its assets and cell: schedule, shapes, task, classes, device."""
        PixelOps.__init__(self, assets.diffusion, assets.image_shape)
        self.assets, self.task, self.profile = assets, assets.task, assets.profile
        self.device = assets.device
        self.forget, self.cover = forget, cover
        self.num_classes = self.task.num_classes
        self.null_class = self.num_classes
        self.weights_evaluated = self.task.weights_evaluated

    # --- models ------------------------------------------------------------------------------

    def base(self, weights: str = "raw") -> nn.Module:
        return self.assets.base(weights)

    def resolve_param_set(self, name: str, auto: str = "full") -> str:
        """Class U-Nets train every parameter (``full``, which ``auto`` means here); the named subsets of
        text-to-image UNets do not apply."""
        if name not in ("full", "auto"):
            raise BenchError(f"parameter set {name!r} applies to text-to-image UNets; class tasks train 'full'")
        return "full"

    def param_set(self, net: nn.Module, name: str) -> list[tuple[str, nn.Parameter]]:
        return list(net.named_parameters())

    def tracked(self) -> list[tuple[nn.Module, str]]:
        """Frozen modules outside the methods' networks whose passes the driver counts (none here)."""
        return []

    def cond(self, role: str, n: int, generator: torch.Generator | None = None) -> Tensor:
        if role not in ROLES:
            raise ValueError(f"unknown conditioning role {role!r}; roles: {', '.join(ROLES)}")
        label = {"cover": self.cover, "null": self.null_class}.get(role, self.forget)
        return torch.full((n,), label, dtype=torch.long, device=self.device)

    # --- data ----------------------------------------------------------------------------------
    def forget_data(self) -> tuple[Tensor, Tensor]:
        """All of D_f (images in [-1, 1], labels) on the device."""
        return self._xf.to(self.device), self._yf.to(self.device)

    def remain_data(self) -> tuple[Tensor, Tensor]:
        return self._xr.to(self.device), self._yr.to(self.device)

    def _next_seed(self) -> int:
        self._stream_seed += 1
        return self._stream_seed

    def forget_batches(self, batch: int, first: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite shuffled batches ``(x0, c)`` of D_f; ``first`` repeats the first ``batch`` images (a
        reference quirk, see SalUn-SD's ``forget_batch``)."""
        stream = batch_stream(self._xf, self._yf, batch, self._next_seed(), self.device)
        if not first:
            return stream
        x, y = self._xf[:batch].to(self.device), self._yf[:batch].to(self.device)
        return iter(lambda: (x, y), None)

    def remain_batches(self, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        return batch_stream(self._xr, self._yr, batch, self._next_seed(), self.device)

    def remain_groups(self) -> Tensor:
        """D_r's class per image (in :meth:`remain_data` order)."""
        return self._yr

    def surrogate_images(self) -> Tensor:
        """SA's surrogate images of the forget condition when they are images: the cover class's training images."""
        x, y = self.assets.splits.train_x, self.assets.splits.train_y
        return x[y == self.cover]

    # --- outputs -------------------------------------------------------------------------------
    def sampler(self, net: nn.Module, weights: str = "raw") -> DiffusionSampler:
        p = self.profile
        return DiffusionSampler(net, self.diffusion, p.sampler_steps, p.guidance, p.eta, self.image_shape, weights)
