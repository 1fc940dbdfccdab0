"""Independent reference implementations, written from the method and protocol specification
(methods.md §1, §7.2, §8.2, §9.3, §11.3; protocol.md §3.1, §5.3), NOT from the code under test.

Nothing here imports ``bench`` or ``methods``: every formula is re-derived with plain numpy/torch so
that tests comparing the harness against these functions can catch a wrong sign, reduction, mask or
argument order. Where the harness draws random numbers, the functions below consume the same draws
in the same order (documented per function), so the comparison can be exact rather than
statistical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

T = 1000


# --- methods.md §1.1: the linear schedule ---------------------------------------------------------
def alphas_cumprod64() -> np.ndarray:
    """``ᾱ_t = prod_{s<=t} (1 - β_s)`` with ``β = linspace(1e-4, 0.02, 1000)``, all in float64."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def alphas_cumprod32() -> Tensor:
    """The same schedule as a float32 torch tensor (what a float32 network computation uses)."""
    return torch.from_numpy(alphas_cumprod64()).float()


# --- protocol.md §3.1: the "generalized" sampler ---------------------------------------------------
def generalized_sample(eps_fn: Callable[[np.ndarray, int, np.ndarray], np.ndarray], labels: np.ndarray,
                       null_class: int, steps: int, w: float, eta: float, draws: Sequence[np.ndarray],
                       *, clip_x0: bool = False, variance: str = "posterior", guidance: str = "1+w"
                       ) -> np.ndarray:
    """The protocol sampler in float64.

    ``eps_fn(x, t, c)`` is the network; ``draws`` supplies N(0, I) draws in order: the first is the
    initial x, then one per step that has a previous timestep (ᾱ_{t'} < 1) when ``eta > 0``.

    The keyword flags produce plausible WRONG variants for the tests: ``clip_x0`` clamps the x0
    estimate to [-1, 1]; ``variance="prior"`` uses σ² = η²·(1 − ᾱ_t/ᾱ_t') (β-like prior variance)
    instead of the posterior one; ``guidance="s"`` uses ``eps_u + w (eps_c − eps_u)``.
    """
    ab = alphas_cumprod64()
    skip = T // steps
    seq = list(range(0, T, skip))
    prev = [-1] + seq[:-1]
    it = iter(draws)
    x = np.asarray(next(it), dtype=np.float64)
    null = np.full_like(labels, null_class)
    for t, tp in zip(reversed(seq), reversed(prev)):
        if w == 0:
            e = eps_fn(x, t, labels)
        else:
            e_c, e_u = eps_fn(x, t, labels), eps_fn(x, t, null)
            e = (1.0 + w) * e_c - w * e_u if guidance == "1+w" else e_u + w * (e_c - e_u)
        a_t = ab[t]
        a_p = ab[tp] if tp >= 0 else 1.0
        x0 = (x - np.sqrt(1.0 - a_t) * e) / np.sqrt(a_t)
        if clip_x0:
            x0 = np.clip(x0, -1.0, 1.0)
        if variance == "posterior":
            sigma = eta * np.sqrt((1.0 - a_t / a_p) * (1.0 - a_p) / (1.0 - a_t))
        else:
            sigma = eta * np.sqrt(1.0 - a_t / a_p)
        x_new = np.sqrt(a_p) * x0 + np.sqrt(max(1.0 - a_p - sigma**2, 0.0)) * e
        if tp >= 0 and eta > 0:
            x_new = x_new + sigma * np.asarray(next(it), dtype=np.float64)
        x = x_new
    return x


def quantise(x: np.ndarray) -> np.ndarray:
    """Model space [-1, 1] to uint8: clamp((x + 1)/2, 0, 1) then round(255 v)."""
    return np.rint(np.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.int64)


# --- methods.md §1.5 / §1.6: clipping and top-fraction ---------------------------------------------
def clip_coefficient(grads: Sequence[Tensor], max_norm: float) -> float:
    """``clip_grad_norm_`` semantics: multiply by ``m / (‖g‖ + 1e-6)`` when that factor is below 1."""
    norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))
    return min(1.0, max_norm / (norm + 1e-6))


def top_fraction(scores: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """methods.md §1.6: exactly ⌊ρ·N⌋ ones over the concatenation of all tensors (parameter order),
    largest first; ties by (stable) sort order."""
    names = list(scores)
    flat = np.concatenate([scores[n].detach().double().flatten().numpy() for n in names])
    k = int(np.floor(ratio * flat.size))
    order = np.argsort(-flat, kind="stable")
    sel = np.zeros(flat.size, dtype=bool)
    sel[order[:k]] = True
    out, off = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = torch.from_numpy(sel[off:off + size].copy()).view(scores[n].shape)
        off += size
    return out


# --- methods.md §7.2 / §8.2: one pass of per-batch guided gradients --------------------------------
def guided_pass_grads(net: nn.Module, x: Tensor, y: Tensor, w: float, batch: int,
                      gen: torch.Generator | None, clip: float | None = 1.0) -> list[dict[str, Tensor]]:
    """ONE shuffled pass over (x, y), batches of ``batch`` with the last partial one kept, network in
    eval() mode; per batch: antithetic t, fresh ε, x_t = q(x, t, ε), guided ε
    ``(1+w)·eps(x_t,t,c) − w·eps(x_t,t,∅)`` from TWO separate network calls (one call if w = 0),
    ``L = mean_i Σ_pix (ε_i − e_i)²``, its gradient, global-norm clipped to ``clip`` (None: unclipped).

    Random draws, in order (``gen`` None = global RNG): ``randperm(N)``; then per batch
    ``randint(0, 1000, (B//2+1,))`` and ``randn(x_b.shape)``.
    Returns the list of per-batch gradients (float32, one dict per batch).
    """
    ab = alphas_cumprod32()
    names, params = zip(*net.named_parameters())
    was = net.training
    net.eval()
    out = []
    try:
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
            xb, yb = x[idx], y[idx]
            B = len(xb)
            u = torch.randint(0, T, (B // 2 + 1,), generator=gen)
            t = torch.cat([u, T - 1 - u])[:B]
            eps = torch.randn(xb.shape, generator=gen)
            a = ab[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * xb + (1 - a).sqrt() * eps
            e_c = net(x_t, t.float(), yb)
            if w == 0:
                e = e_c
            else:
                e_u = net(x_t, t.float(), torch.full_like(yb, net.null_class))
                e = (1 + w) * e_c - w * e_u
            loss = (eps - e).pow(2).sum(dim=(1, 2, 3)).mean()
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            gs = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(gs, params)]
            coef = 1.0 if clip is None else clip_coefficient(gs, clip)
            out.append({n: g * coef for n, g in zip(names, gs)})
    finally:
        net.train(was)
    return out


def fisher_from_batches(batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """methods.md §8.2: ``F = Σ_b g_b² / n_batches`` (square of each clipped per-batch gradient)."""
    n = len(batches)
    return {k: sum(b[k].double().pow(2) for b in batches) / n for k in batches[0]}


def signed_sum(batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """methods.md §7.2: ``G = Σ_b g_b`` (signed)."""
    return {k: sum(b[k].double() for b in batches) for k in batches[0]}


# --- toy networks ----------------------------------------------------------------------------------
class AffineEps(nn.Module):
    """A deterministic toy ε-network with the harness's interface ``net(x, t_float, c)``:
    ``eps = a·x + b[c] + k·t/1000``, with a per-class (and null-class) offset image ``b``."""

    def __init__(self, num_classes: int, shape: tuple[int, ...], a: float, k: float, seed: int = 0,
                 b_scale: float = 0.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.null_class = num_classes
        self.a, self.k = a, k
        self.b = nn.Parameter(b_scale * torch.randn(num_classes + 1, *shape, generator=g))

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return self.a * x + self.b[c] + self.k * t.view(-1, *([1] * (x.ndim - 1))) / 1000.0

    def np_eps(self, x: np.ndarray, t: int, c: np.ndarray) -> np.ndarray:
        b = self.b.detach().double().numpy()
        return self.a * x + b[c] + self.k * t / 1000.0


class ClassConstantEps(nn.Module):
    """``eps(θ; x, t, c) = θ_c``: a learned constant image per class, independent of x and t. Records
    every timestep it is called with (for the stratification check)."""

    def __init__(self, theta: Tensor) -> None:
        super().__init__()
        self.null_class = theta.shape[0] - 1
        self.theta = nn.Parameter(theta.clone())
        self.seen_t: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.seen_t.append(t.detach().clone())
        return self.theta[c] + 0.0 * x


# --- Kynkäänniemi et al. precision / recall (protocol.md §5.3) -------------------------------------
def knn_precision_recall(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: fraction of GENERATED samples inside the real manifold (the union of balls around
    every real sample with radius = distance to its k-th nearest real neighbour). Recall: fraction of
    REAL samples inside the generated manifold (same construction on the generated set)."""

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(d2, 0.0))

    def radii(s: np.ndarray) -> np.ndarray:
        return np.sort(dist(s, s), axis=1)[:, k]  # column 0 is the point itself

    r_real, r_gen = radii(real), radii(generated)
    precision = float((dist(generated, real) <= r_real[None, :]).any(1).mean())
    recall = float((dist(real, generated) <= r_gen[None, :]).any(1).mean())
    return precision, recall
