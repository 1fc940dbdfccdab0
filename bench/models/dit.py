"""The class-conditional Diffusion Transformer (DiT) as a drop-in for the class tasks' U-Nets.

diffusers' ``DiTTransformer2DModel`` (the architecture of DiT-XL/2 and of ``DiTPipeline``) conditions every
block through adaLN-Zero on the timestep and a class label. Its label table has ``num_classes + 1`` rows:
the last is the null class that ``DiTPipeline`` passes for the unconditional half of guidance, the same
convention as the harness's U-Nets (``null_class == num_classes``).

Two of its conventions are changed or hidden so that a method sees the same network contract as on a U-Net:

* the label dropout inside diffusers' ``LabelEmbedding`` (10 % in train mode, from the global RNG) is
  switched off; the harness drops labels itself (``Diffusion.drop_labels``, seeded, at the recipe's rate);
* a DiT trained with a learned variance (DiT-XL/2: 8 output channels for 4 latent channels) returns only
  the noise prediction, the first ``in_channels`` channels, as ``DiTPipeline`` does.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import Tensor, nn

from bench.models.nets import clone_without_hooks

ARCH = "dit"
CLASS_NAME = "DiTTransformer2DModel"


class CondDiT(nn.Module):
    """``net(x, t, c) -> eps`` over a ``DiTTransformer2DModel`` with ``num_classes`` labels plus the null one."""

    def __init__(self, config: dict, num_classes: int) -> None:
        super().__init__()
        self._setup(DiTTransformer2DModel(**config, num_embeds_ada_norm=num_classes), num_classes)

    def _setup(self, dit: DiTTransformer2DModel, num_classes: int) -> None:
        self.num_classes = num_classes
        self.null_class = num_classes
        self.dit = dit
        for m in dit.modules():
            if isinstance(m, LabelEmbedding):
                m.dropout_prob = 0.0  # the table keeps its null row; only the harness drops labels

    @property
    def eps_channels(self) -> int:
        return self.dit.config.in_channels

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        out = self.dit(x, timestep=t, class_labels=c).sample
        return out[:, : self.eps_channels] if out.shape[1] != self.eps_channels else out

    def save(self, folder: Path) -> None:
        self.dit.save_pretrained(folder, safe_serialization=True)

    @classmethod
    def load(cls, folder: Path, num_classes: int) -> CondDiT:
        dit = DiTTransformer2DModel.from_pretrained(folder, local_files_only=True)
        if dit.config.num_embeds_ada_norm != num_classes:
            raise ValueError(f"{folder}: DiT has {dit.config.num_embeds_ada_norm} classes, expected {num_classes}")
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._setup(dit, num_classes)
        return net

    def clone(self) -> CondDiT:
        return clone_without_hooks(self)
