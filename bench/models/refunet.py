"""The reference class-conditional U-Net of the SalUn / SFR-on / Selective Amnesia / SFD papers.

It is the DDIM-style U-Net (Ho et al.'s CIFAR-10 network) with a learned class embedding added to
the timestep embedding path: every residual block receives ``concat(temb, cemb)``. Parameter names
follow the reference implementation's state dict (``Conditional_Model`` in the Unlearn-Saliency
repository, without DataParallel's ``module.`` prefix), so a reference checkpoint loads with
``load_state_dict(strict=True)``; see :mod:`bench.models.checkpoints` for the file formats.

The interface matches :class:`bench.models.nets.CondUNet`: ``forward(x, t, c)`` with ``c == num_classes``
(``null_class``) selecting the learned null embedding used by label dropout and classifier-free
guidance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bench.models.nets import clone_without_hooks

ARCH = "reference-unet"

CIFAR10_CONFIG: dict = {
    "ch": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.1,
    "resolution": 32, "in_channels": 3, "out_channels": 3, "norm_groups": 32,
}
STL10_CONFIG: dict = {
    "ch": 128, "ch_mult": [1, 2, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.1,
    "resolution": 64, "in_channels": 3, "out_channels": 3, "norm_groups": 32,
}

_REQUIRED = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resolution", "in_channels",
             "out_channels")


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[sin(t·f), cos(t·f)]`` with ``f_k = exp(-ln(10000)·k/(dim/2 - 1))``,
    computed in float32 (equal to diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=False,
    downscale_freq_shift=1)``)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(k * (-math.log(10000.0) / (half - 1)))
    arg = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; ``emb`` is the already activated ``silu(concat(temb, cemb))``
    (or ``silu(temb)`` for the unconditional variant), shared by every block of a forward pass."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int,
                 class_cond: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        proj = nn.Linear(emb_dim, out_ch)
        # the reference names the projection after what it consumes; the unconditional DDPM/DDIM
        # network (no class branch) calls it temb_proj
        self.class_cond = class_cond
        if class_cond:
            self.temb_cemb_proj = proj
        else:
            self.temb_proj = proj
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        proj = self.temb_cemb_proj if self.class_cond else self.temb_proj
        h = h + proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, scale 1/√C, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, 1, HW, C): one head whose dimension is C, so SDPA's default scale is 1/sqrt(C)
        q = self.q(hn).flatten(2).transpose(1, 2).unsqueeze(1)
        k = self.k(hn).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.v(hn).flatten(2).transpose(1, 2).unsqueeze(1)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (empty or one per block) and an
    optional ``downsample``/``upsample``, in the reference's registration order."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Dense(nn.Module):
    """Holds ``dense = [Linear(ch→E), Linear(E→E)]`` (reference names ``temb.dense.*``/``cemb.dense.*``)."""

    def __init__(self, ch: int, emb: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(ch, emb), nn.Linear(emb, emb)])

    def forward(self, x: Tensor) -> Tensor:
        return self.dense[1](F.silu(self.dense[0](x)))


def normalise_config(config: dict) -> dict:
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"reference U-Net config lacks {', '.join(missing)}")
    unknown = sorted(set(config) - set(_REQUIRED) - {"norm_groups", "class_cond"})
    if unknown:
        raise ValueError(f"reference U-Net config has unknown keys: {', '.join(unknown)}")
    cfg = {k: config[k] for k in _REQUIRED}
    cfg["ch"] = int(cfg["ch"])
    cfg["ch_mult"] = [int(m) for m in cfg["ch_mult"]]
    cfg["num_res_blocks"] = int(cfg["num_res_blocks"])
    cfg["attn_resolutions"] = [int(r) for r in cfg["attn_resolutions"]]
    cfg["dropout"] = float(cfg["dropout"])
    cfg["resolution"] = int(cfg["resolution"])
    cfg["in_channels"] = int(cfg["in_channels"])
    cfg["out_channels"] = int(cfg["out_channels"])
    cfg["norm_groups"] = int(config.get("norm_groups", 32))
    cfg["class_cond"] = bool(config.get("class_cond", True))
    return cfg


class RefUNet(nn.Module):
    """The reference conditional U-Net (``Conditional_Model``) as a plain module.

    ``config`` keys: ``ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resolution,
    in_channels, out_channels`` and optionally ``norm_groups`` (default 32) and ``class_cond``
    (default True; False drops the class branch and gives the unconditional DDPM network).
    """

    def __init__(self, config: dict, num_classes: int) -> None:
        super().__init__()
        cfg = normalise_config(config)
        self.config = cfg
        self.num_classes = int(num_classes)
        self.null_class = self.num_classes
        self.class_cond = cfg["class_cond"]
        ch, mult, nrb = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"]
        groups, dropout, attn_res = cfg["norm_groups"], cfg["dropout"], set(cfg["attn_resolutions"])
        self.ch = ch
        emb = 4 * ch
        emb_in = 2 * emb if self.class_cond else emb
        self.num_resolutions = len(mult)
        self.num_res_blocks = nrb

        def res(i: int, o: int) -> ResnetBlock:
            return ResnetBlock(i, o, emb_in, dropout, groups, self.class_cond)

        # registration order follows the reference, so state-dict and parameter orders match it
        self.temb = _Dense(ch, emb)
        if self.class_cond:
            self.classes_emb = nn.Embedding(self.num_classes, ch)
            self.null_classes_emb = nn.Parameter(torch.randn(ch))
            self.cemb = _Dense(ch, emb)
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)

        in_mult = [1, *mult]
        cur = cfg["resolution"]
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(self.num_resolutions):
            level = _Level()
            block_in, block_out = ch * in_mult[lvl], ch * mult[lvl]
            for _ in range(nrb):
                level.block.append(res(block_in, block_out))
                block_in = block_out
                if cur in attn_res:
                    level.attn.append(AttnBlock(block_in, groups))
            if lvl != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
                cur //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = res(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = res(block_in, block_in)

        ups: list[_Level] = []
        for lvl in reversed(range(self.num_resolutions)):
            level = _Level()
            block_out = ch * mult[lvl]
            for i in range(nrb + 1):
                skip = ch * (in_mult[lvl] if i == nrb else mult[lvl])
                level.block.append(res(block_in + skip, block_out))
                block_in = block_out
                if cur in attn_res:
                    level.attn.append(AttnBlock(block_in, groups))
            if lvl != 0:
                level.upsample = Upsample(block_in)
                cur *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)

        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, cfg["out_channels"], 3, padding=1)

    # ------------------------------------------------------------------------------------------
    def embedding(self, t: Tensor, c: Tensor | None) -> Tensor:
        """``silu(concat(temb, cemb))`` (``silu(temb)`` when unconditional), fed to every block."""
        temb = self.temb(timestep_embedding(t, self.ch))
        if not self.class_cond:
            return F.silu(temb)
        # rows 0..num_classes-1 are the class table, row num_classes the learned null vector; a
        # gather keeps the forward free of host syncs and lets gradients reach both
        table = torch.cat([self.classes_emb.weight, self.null_classes_emb[None, :]], dim=0)
        cemb = self.cemb(F.embedding(c, table))
        return F.silu(torch.cat([temb, cemb], dim=1))

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        emb = self.embedding(t, c)
        hs = [self.conv_in(x)]
        for lvl, level in enumerate(self.down):
            for i, block in enumerate(level.block):
                h = block(hs[-1], emb)
                if len(level.attn):
                    h = level.attn[i](h)
                hs.append(h)
            if lvl != self.num_resolutions - 1:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_1(h, emb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, emb)

        for lvl in reversed(range(self.num_resolutions)):
            level = self.up[lvl]
            for i, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
                if len(level.attn):
                    h = level.attn[i](h)
            if lvl != 0:
                h = level.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))

    # ------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """``config.json`` (arch, num_classes, config) and ``model.safetensors`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"arch": ARCH, "num_classes": self.num_classes, "config": self.config}
        (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: Path, num_classes: int) -> RefUNet:
        """The model saved in ``folder`` by :meth:`save`, in eval mode, on the CPU."""
        folder = Path(folder)
        meta = json.loads((folder / "config.json").read_text())
        if meta.get("arch") != ARCH:
            raise ValueError(f"{folder}: arch is {meta.get('arch')!r}, expected {ARCH!r}")
        if int(meta.get("num_classes", -1)) != num_classes:
            raise ValueError(f"{folder}: model has {meta.get('num_classes')} classes, expected {num_classes}")
        net = cls(meta["config"], num_classes)
        net.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        return net.eval()

    def clone(self) -> RefUNet:
        """A deep copy with no hooks attached (hooks belong to the copy's owner)."""
        return clone_without_hooks(self)
