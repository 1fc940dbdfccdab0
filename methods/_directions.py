"""EBU's per-iteration pieces: global top-k masks, the two-task min-norm (MGDA) and PCGrad combinations of a
forget and a remain gradient, and flat-vector helpers (methods.md §12).

Every piece stays on the tensors' device and never reads a value back to the host (no ``float()``,
``bool()``, ``.item()`` or boolean indexing, which waits for the GPU): EBU runs them every iteration on
vectors as long as the whole U-Net. tests/test_sa_ebu.py runs them on the ``meta`` device, where any such
read fails."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.errors import BenchError


def min_norm_coef(u: Tensor, v: Tensor) -> Tensor:
    """Two-task MGDA closed form: ``a = clip(((v - u).v) / max(|u - v|^2, 1e-12), 0, 1)`` minimises
    ``|a u + (1 - a) v|`` over the segment; ``a = 0.5`` when ``u == v``. A 0-d tensor."""
    diff = u - v
    den = diff.pow(2).sum()
    a = (((v - u) * v).sum() / den.clamp_min(1e-12)).clamp(0.0, 1.0)
    return torch.where(den == 0, torch.full_like(a, 0.5), a)


def min_norm_combine(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(a u + (1 - a) v, a)``: the min-norm point of the segment ``[u, v]``."""
    a = min_norm_coef(u, v)
    return a * u + (1.0 - a) * v, a


def pcgrad_combine(u: Tensor, v: Tensor) -> Tensor:
    """PCGrad for two tasks: if ``u.v < 0`` project each onto the other's normal plane (both
    projections use the ORIGINAL vectors), then sum; otherwise ``u + v``."""
    dot = (u * v).sum()
    uu, vv = u.pow(2).sum(), v.pow(2).sum()
    tiny = torch.finfo(u.dtype).tiny
    u2 = torch.where(vv > 0, u - (dot / vv.clamp_min(tiny)) * v, u)
    v2 = torch.where(uu > 0, v - (dot / uu.clamp_min(tiny)) * u, v)
    return torch.where(dot >= 0, u + v, u2 + v2)


def select_top(score: Tensor, ratio: float) -> Tensor:
    """``methods._masks.top_fraction`` on one flat score vector, in O(n) (``kthvalue`` instead of a
    full sort): exactly ``floor(ratio * n)`` ones, ties broken by index like the stable descending
    sort. EBU recomputes both masks every iteration, where the full sort costs as much as a step.
    The ties at the threshold are resolved with a running count, so nothing is read back."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    n = score.numel()
    k = int(ratio * n)
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=score.device)
    if k == n:
        return torch.ones(n, dtype=torch.bool, device=score.device)
    s = score.reshape(-1).float()
    thr = torch.kthvalue(s, n - k + 1).values
    above = s > thr
    at = s == thr
    need = k - above.sum()
    return above | (at & (at.cumsum(0) <= need))


def combine_direction(g_f: Tensor, g_r: Tensor, m_f: Tensor, m_r: Tensor, balance: str = "mgda",
                      unselected: str = "none") -> tuple[Tensor, Tensor]:
    """EBU's update direction on flat vectors: ``d[Fo] = g_f``, ``d[Ro] = g_r``, the shared
    coordinates ``S = M_f & M_r`` get the min-norm (``mgda``) or PCGrad combination, the rest is 0
    (``unselected = none``/``frozen``) or ``g_r`` (``remain``). Returns ``(d, a)`` (``a`` a 0-d
    tensor, NaN for PCGrad and when S is empty)."""
    if unselected not in ("none", "frozen", "remain"):
        raise BenchError(f"ebu.update_unselected must be none, remain or frozen, not {unselected!r}")
    if balance not in ("mgda", "pcgrad"):
        raise BenchError(f"ebu.balance must be 'mgda' or 'pcgrad', not {balance!r}")
    s = m_f & m_r
    # the two gradients restricted to S (zeros elsewhere add nothing to the dot products)
    u, v = torch.where(s, g_f, 0.0), torch.where(s, g_r, 0.0)
    nan = torch.full((), float("nan"), dtype=g_f.dtype, device=g_f.device)
    if balance == "mgda":
        shared, a = min_norm_combine(u, v)
        a = torch.where(s.any(), a, nan)
    else:
        shared, a = pcgrad_combine(u, v), nan
    rest = g_r if unselected == "remain" else torch.zeros_like(g_f)
    d = torch.where(m_r, g_r, rest)
    d = torch.where(m_f, g_f, d)
    return torch.where(s, shared, d), a


def flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])



def grads_of(loss: Tensor, params) -> list[Tensor]:
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]


def set_grads(params, direction: Tensor) -> None:
    for p, g in zip(params, direction.split([p.numel() for p in params])):
        p.grad = g.view_as(p).clone()


@torch.no_grad()
def restore(params, where: Tensor, theta: Tensor) -> None:
    """Put back the flat ``theta``'s values where ``where`` is set (no host read of the mask)."""
    now = flat(p.detach() for p in params)
    for p, v in zip(params, torch.where(where, theta, now).split([p.numel() for p in params])):
        p.copy_(v.view_as(p))
