"""Low-rank residual adapters on a diffusers UNet's transformer blocks, gated per prompt (SPM, Lyu et al.,
CVPR 2024: the "semi-permeable membrane" and its Facilitated Transport).

Every ``nn.Linear`` and ``nn.Conv2d`` inside a ``Transformer2DModel`` (SD v1.x: ``proj_in``, ``proj_out``,
``attn1``/``attn2`` ``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``ff.net.0.proj``, ``ff.net.2``) gets a
residual branch::

    y = W x + g · (α / r) · U(D(x))        D: in → r (Conv2d: the layer's kernel, stride and padding),
                                           U: r → out (Conv2d: 1×1), no bias; D ~ kaiming_uniform(a=√5), U = 0

so a freshly attached adapter changes nothing. The layer object stays where it was and keeps its own
weights under their own state-dict keys (its class becomes a subclass adding ``spm_down``/``spm_up``),
so the UNet's state dict is the base one plus ``*.spm_down.weight``, ``*.spm_up.weight`` and the
``spm.*`` buffers: :func:`attach_from_state` rebuilds the adapted UNet from it.

The gate ``g`` is one number per sample, computed once per UNet call from the ``encoder_hidden_states``
the UNet receives (the UNet's class becomes a subclass that does this before running): with transport,
``g = clamp(max_k cos(flat(e), flat(c_k)), 0, 1) ** power`` over the concept embeddings ``c_k``;
without, ``g = 1``. :func:`fixed_gate` overrides it (training runs the adapter at 1, as the reference's
``with network:``; 0 gives back the base UNet's output).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.errors import BenchError

#: the blocks whose Linear/Conv2d layers are adapted (the reference's DEFAULT_TARGET_REPLACE)
TARGET_BLOCKS = ("Transformer2DModel",)
GATE = "spm"  # the gate's name on the UNet (its buffers are ``spm.*`` in the state dict)


class Gate(nn.Module):
    """The per-sample transport rate of one set of adapters, shared by all of them.

    Buffers (saved with the UNet): ``concept`` (K, L, D) the erased concept's prompt embeddings,
    ``transport`` (1 or 0), ``power`` (the gate's exponent: 2 as the reference, which scales both
    adapter matrices by γ), ``alpha`` (the adapters' α)."""

    def __init__(self, concept: Tensor, transport: bool = True, power: float = 2.0, alpha: float = 1.0) -> None:
        super().__init__()
        if concept.dim() == 2:
            concept = concept.unsqueeze(0)
        self.register_buffer("concept", concept.detach().clone().float())
        self.register_buffer("transport", torch.tensor(1.0 if transport else 0.0))
        self.register_buffer("power", torch.tensor(float(power)))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.fixed: float | None = None  # set by fixed_gate(); not saved
        self.current: Tensor | float | None = None  # the gate of the UNet call in progress

    def forward(self, e: Tensor) -> Tensor:
        """The gate (B,) of prompt embeddings ``e`` (B, L, D), ignoring :attr:`fixed`."""
        if not bool(self.transport):
            return torch.ones(e.shape[0], device=e.device, dtype=e.dtype)
        if e.shape[1:] != self.concept.shape[1:]:
            raise BenchError(f"SPM gate: prompt embeddings of shape {tuple(e.shape[1:])}, the concept's are "
                             f"{tuple(self.concept.shape[1:])}")
        cos = F.normalize(e.flatten(1).float(), dim=1) @ F.normalize(self.concept.flatten(1), dim=1).T
        return cos.max(1).values.clamp(0.0, 1.0).pow(self.power).to(e.dtype)

    @contextlib.contextmanager
    def gating(self, e: Tensor | None) -> Iterator[None]:
        self.current = self.fixed if self.fixed is not None else (None if e is None else self(e))
        try:
            yield
        finally:
            self.current = None

    def factor(self, out: Tensor) -> Tensor | float:
        """The gate, shaped to multiply a layer output ``out`` whose first dimension is the UNet's batch."""
        g = self.current
        if g is None:
            raise BenchError("an SPM adapter ran outside a gated UNet call (no encoder_hidden_states seen)")
        if isinstance(g, float):
            return g
        if out.shape[0] != g.shape[0]:
            raise BenchError(f"SPM gate: {g.shape[0]} prompts but a layer batch of {out.shape[0]}")
        return g.view(-1, *([1] * (out.dim() - 1))).to(out.dtype)


class Rank1Adapter:
    """Mixin placed before ``nn.Linear``/``nn.Conv2d`` in an adapted layer's class (see :func:`attach`)."""

    spm_down: nn.Module
    spm_up: nn.Module
    spm_scale: float

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        out = super().forward(x, *args, **kwargs)
        return out + self.spm_up(self.spm_down(x)) * (self.spm_scale * self._spm_gate.factor(out))

    def delta_weight(self) -> Tensor:
        """The adapter's weight change (α/r) U D, shaped like the layer's weight (1×1 or Linear layers)."""
        d, u = self.spm_down.weight, self.spm_up.weight
        delta = u.flatten(1) @ d.flatten(1)
        if d.dim() == 4 and d.shape[-2:] != (1, 1):
            raise BenchError("delta_weight is defined for Linear and 1×1 Conv2d layers")
        return (self.spm_scale * delta).view(self.weight.shape)


class GatedUNet:
    """Mixin placed before the UNet's class: each call sets the gate from its ``encoder_hidden_states``."""

    def forward(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        with getattr(self, GATE).gating(encoder_hidden_states):
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)


_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type) -> type:
    key = (mixin, base)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"spm_base_class": base})
    return _SUBCLASSES[key]


def target_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every Linear and Conv2d inside the UNet's transformer blocks."""
    out, seen = [], set()
    for name, block in net.named_modules():
        if type(block).__name__ not in TARGET_BLOCKS:
            continue
        for child, m in block.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in seen:
                seen.add(id(m))
                out.append((f"{name}.{child}", m))
    return out


def adapted_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, Rank1Adapter)]


def _adapt(layer: nn.Module, gate: Gate, rank: int, alpha: float) -> None:
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        r = min(rank, layer.in_channels, layer.out_channels)
        down = nn.Conv2d(layer.in_channels, r, layer.kernel_size, layer.stride, layer.padding, bias=False)
        up = nn.Conv2d(r, layer.out_channels, 1, 1, bias=False)
    else:
        r = rank
        down, up = nn.Linear(layer.in_features, r, bias=False), nn.Linear(r, layer.out_features, bias=False)
    nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
    nn.init.zeros_(up.weight)
    layer.__class__ = _subclass(Rank1Adapter, type(layer))
    layer.spm_down = down.to(w.device, w.dtype)
    layer.spm_up = up.to(w.device, w.dtype)
    layer.spm_scale = alpha / r
    layer.__dict__["_spm_gate"] = gate  # shared, not a submodule (deepcopy keeps the sharing)


def attach(net: nn.Module, concept: Tensor, rank: int = 1, alpha: float = 1.0, transport: bool = True,
           power: float = 2.0, layers: list[str] | None = None) -> list[nn.Parameter]:
    """Adapt ``net`` in place (every transformer-block Linear/Conv2d, or the named ``layers``) and return
    the adapters' parameters (the base weights are left as they were: freeze them yourself)."""
    if hasattr(net, GATE) or adapted_layers(net):
        raise BenchError("this UNet already has SPM adapters; detach them first")
    if rank < 1:
        raise BenchError(f"SPM rank must be at least 1, not {rank}")
    chosen = target_layers(net)
    if layers is not None:
        by_name = dict(net.named_modules())
        missing = [n for n in layers if n not in by_name]
        if missing:
            raise BenchError(f"no such UNet layers: {', '.join(missing[:3])}")
        chosen = [(n, by_name[n]) for n in layers]
    if not chosen:
        raise BenchError("SPM: the UNet has no Linear or Conv2d layer inside a Transformer2DModel block")
    w = next(net.parameters())
    gate = Gate(concept, transport, power, alpha).to(w.device)
    net.add_module(GATE, gate)
    net.__class__ = _subclass(GatedUNet, type(net))
    for _, layer in chosen:
        _adapt(layer, gate, rank, alpha)
    return adapter_parameters(net)


def adapter_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for _, m in adapted_layers(net) for p in (m.spm_down.weight, m.spm_up.weight)]


def detach(net: nn.Module) -> nn.Module:
    """Remove every adapter and the gate: the same layer objects, with their original classes and state."""
    for _, layer in adapted_layers(net):
        del layer.spm_down, layer.spm_up
        layer.__dict__.pop("_spm_gate", None)
        layer.__dict__.pop("spm_scale", None)
        layer.__class__ = layer.spm_base_class
    if isinstance(net, GatedUNet):
        net.__class__ = net.spm_base_class
    if GATE in net._modules:
        del net._modules[GATE]
    return net


@contextlib.contextmanager
def fixed_gate(net: nn.Module, value: float = 1.0) -> Iterator[None]:
    """Inside, every sample's gate is ``value`` (1: the adapted model as trained; 0: the base model)."""
    gate: Gate = getattr(net, GATE)
    before, gate.fixed = gate.fixed, float(value)
    try:
        yield
    finally:
        gate.fixed = before


def attach_from_state(net: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """``net`` (a base UNet) with the adapters a saved state dict of an adapted UNet names, ready for
    ``load_state_dict(state)``; a state without them leaves ``net`` as it is."""
    downs = {k[: -len(".spm_down.weight")]: v for k, v in state.items() if k.endswith(".spm_down.weight")}
    if not downs or f"{GATE}.concept" not in state:
        return net
    ranks = {int(v.shape[0]) for v in downs.values()}
    attach(net, state[f"{GATE}.concept"], rank=max(ranks), alpha=float(state[f"{GATE}.alpha"]),
           transport=bool(state[f"{GATE}.transport"]), power=float(state[f"{GATE}.power"]), layers=sorted(downs))
    return net
