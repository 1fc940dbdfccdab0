"""Embedding attack (metrics/attack.py): the class table it finds is the label lookup of each network family,
the optimisation reaches the known optimum of a network whose answer is a linear image of the class
embedding, and it leaves every other weight alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.models.diffusion import Diffusion
from bench.models.dit import CondDiT
from bench.models.nets import CondUNet
from bench.models.refunet import RefUNet
from bench.tasks.digits import DIGITS
from bench.tasks.digits_dit import SMOKE_DIT
from metrics.attack import class_table, invert_class_row

REF_TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0, resolution=8,
                in_channels=1, out_channels=1, norm_groups=8)


@pytest.mark.parametrize("build", [lambda: CondUNet(DIGITS.unet_config, 10), lambda: CondDiT(SMOKE_DIT, 10),
                                   lambda: RefUNet(REF_TINY, 10)], ids=["unet", "dit", "refunet"])
def test_the_class_table_is_the_label_lookup(build):
    torch.manual_seed(0)
    net = build().eval()
    table = class_table(net, 10)
    assert table is not None and table.num_embeddings in (10, 11)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        before = {c: net(x, t, torch.full((2,), c)) for c in (3, 4)}
        table.weight[3] += 1.0
        after = {c: net(x, t, torch.full((2,), c)) for c in (3, 4)}
    assert not torch.allclose(before[3], after[3])  # the row conditions its own label ...
    assert torch.equal(before[4], after[4])  # ... and no other


class LinearDecoder(nn.Module):
    """An exact denoiser of the image ``A e_c``: predicts the noise that separates ``x_t`` from it, so
    ``L_simple`` on images x0 is a weighted ``||x0 - A e_c||^2`` whose minimum over ``e_c`` is known."""

    def __init__(self, diffusion: Diffusion, dim: int = 64) -> None:
        super().__init__()
        self.ab = diffusion.alphas_cumprod
        self.emb = nn.Embedding(11, dim)
        self.A = nn.Linear(dim, dim, bias=False)
        nn.init.orthogonal_(self.A.weight)

    def forward(self, x, t, c):
        ab = self.ab[t.long()].view(-1, 1, 1, 1)
        x0 = self.A(self.emb(c)).view(x.shape)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def test_the_attack_finds_the_embedding_that_draws_the_forget_images():
    torch.manual_seed(0)
    d = Diffusion()
    net = LinearDecoder(d)
    with torch.no_grad():
        net.emb.weight[0] = 0.0  # the method "erased" class 0: its row now draws a blank image
    target = torch.rand(1, 1, 8, 8) * 2 - 1
    x0 = target.repeat(8, 1, 1, 1)
    other, decoder = net.emb.weight[1:].clone(), net.A.weight.clone()
    loss0, loss1 = invert_class_row(net, net.emb, d, x0, 0, steps=400, lr=2e-2, seed=0)
    assert loss1 < 1e-2 * loss0
    with torch.no_grad():
        drawn = net.A(net.emb.weight[0]).view(1, 1, 8, 8)
    assert torch.allclose(drawn, target, atol=0.15)  # the class is back: its images are drawn again
    assert torch.equal(net.emb.weight[1:], other) and torch.equal(net.A.weight, decoder)
    assert not any(p.requires_grad for p in net.parameters())
