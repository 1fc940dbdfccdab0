from __future__ import annotations

import math

import torch

from bench.tasks.digits import DIGITS
from methods._masks import apply_mask, top_fraction


def test_top_fraction_selects_exactly_floor_rho_n_globally():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(7, 3, generator=g), "b": 2 + torch.rand(11, generator=g)}
    for rho in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
        m = top_fraction(scores, rho)
        assert sum(int(v.sum()) for v in m.values()) == math.floor(rho * 32)
    m = top_fraction(scores, 11 / 32)  # b's values dominate: a global ranking takes all of b first
    assert m["b"].all() and not m["a"].any()


def test_top_fraction_keeps_the_largest():
    scores = {"w": torch.tensor([0.1, 5.0, 3.0, 0.2])}
    assert top_fraction(scores, 0.5)["w"].tolist() == [False, True, True, False]


def test_apply_mask_zeroes_masked_gradients(tiny_net):
    x = torch.randn(2, 1, 8, 8)
    tiny_net(x, torch.tensor([1.0, 2.0]), torch.tensor([0, 1])).pow(2).sum().backward()
    mask = top_fraction({n: p.grad.abs() for n, p in tiny_net.named_parameters()}, 0.5)
    apply_mask(tiny_net, mask)
    for n, p in tiny_net.named_parameters():
        assert torch.all(p.grad[~mask[n]] == 0)


def test_salun_leaves_masked_out_weights_at_pretrained_values(make_ctx, assets):
    from bench.method import METHODS, resolve_config

    cls = METHODS.get("salun")
    ctx = make_ctx()
    with ctx.counts.counting_optimizer_steps():
        gen = cls(resolve_config(cls, DIGITS, DIGITS.profile("smoke"), iters=3)).unlearn(ctx)
    base = dict(assets.base("raw").named_parameters())
    moved = {n: (p.detach() != base[n].detach()) for n, p in gen.net.named_parameters()}
    total_moved = sum(int(m.sum()) for m in moved.values())
    total = sum(m.numel() for m in moved.values())
    assert 0 < total_moved <= total // 2  # only weights inside the top-50% mask may change
    assert ctx.counts.optimizer_steps == 3
    # one backward per mask batch (D_f = 142 images in batches of 128) + two nets' worth per iteration
    assert ctx.counts.backward_passes == 2 + 3 * 2
