"""Weight-saliency masks shared by SalUn, PECKER and EBU (methods.md §1.5, §1.6)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def top_fraction(scores: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Global top-``ratio`` selection: exactly ``floor(ratio * N)`` ones across ALL tensors.

    ``scores`` maps parameter names to non-negative tensors; ranking is global over every element
    (not per layer), in descending order, ties broken by sort order.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    k = int(ratio * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = mask[offset:offset + size].view_as(scores[n])
        offset += size
    return out


def apply_mask(net: nn.Module, mask: dict[str, Tensor]) -> None:
    """``grad <- grad * mask`` for every parameter with a gradient."""
    for name, p in net.named_parameters():
        if p.grad is not None and name in mask:
            p.grad.mul_(mask[name].to(p.grad.dtype))


def mask_fraction(mask: dict[str, Tensor]) -> Tensor:
    """The kept fraction as a 0-d tensor on the mask's device (``ctx.log`` reads it back later)."""
    total = sum(m.numel() for m in mask.values())
    return sum(m.sum() for m in mask.values()) / max(total, 1)


def named_grads(net: nn.Module) -> dict[str, Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in net.named_parameters()}


def take_grads(net: nn.Module) -> list[Tensor]:
    """The gradients in parameter order (zeros where unused), moved out of ``.grad`` without a copy."""
    out = []
    for p in net.parameters():
        out.append(p.grad if p.grad is not None else torch.zeros_like(p))
        p.grad = None
    return out


def float_masks(mask: dict[str, Tensor], net: nn.Module) -> list[Tensor]:
    """``mask`` in ``net``'s parameter order and dtype, converted in one pass over the flat mask."""
    named = list(net.named_parameters())
    flat = torch.cat([mask[n].reshape(-1) for n, _ in named]).to(named[0][1].dtype)
    return [m.view_as(p) for m, (_, p) in zip(flat.split([p.numel() for _, p in named]), named)]


def clip_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """``clip_grad_norm_`` semantics: scale by ``max_norm / (||g|| + 1e-6)`` when that is below 1."""
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm)
