"""SFR-on pieces: the Fisher-ratio mask, the adaptive weights, the mask-then-clip order."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models.diffusion import Diffusion
from bench.models.family import PixelOps
from bench.models.nets import CondUNet
from bench.tasks.digits import DIGITS
from methods._fisher import fisher_ratio_mask, guided_fisher
from methods._masks import clip_norm_, named_grads
from methods.sfron import SFRon, adaptive_weights, cosine_alpha, forget_grad_

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CondUNet(DIGITS.unet_config, 10)


def test_fisher_ratio_mask_on_constructed_fishers():
    ff = {"a": torch.tensor([1.0, 0.0, 2.0, 0.0, 1e-3]), "b": torch.tensor([[5.0, 1.0]])}
    fr = {"a": torch.tensor([1.0, 0.0, 1.0, 3.0, 1e-2]), "b": torch.tensor([[4.0, 2.0]])}
    m = fisher_ratio_mask(ff, fr, gamma=1.0)
    assert m["a"].dtype == torch.bool and m["b"].shape == (1, 2)
    # equal -> kept (>=), 0/0 -> (1e-15/1e-15) = 1 -> kept, 2/1 kept, 0/3 dropped, 1e-3/1e-2 dropped
    assert m["a"].tolist() == [True, True, True, False, False]
    assert m["b"].tolist() == [[True, False]]
    m2 = fisher_ratio_mask(ff, fr, gamma=1.5)
    assert m2["a"].tolist() == [False, False, True, False, False]
    assert m2["b"].tolist() == [[False, False]]


def test_guided_fisher_real_pass_is_clipped_mean_of_squares(net):
    d = Diffusion()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    net.train()
    f = guided_fisher(net, PixelOps(d), x, y, w=2.0, batch=4, clip=1.0, generator=g)  # 3 batches (4, 4, 2)
    assert net.training, "eval_mode must restore train()"
    assert all(p.grad is None for p in net.parameters())
    total = sum(float(v.sum()) for v in f.values())
    # each clipped batch gradient has squared norm <= 1, F is their mean over 3 batches
    assert 0.0 < total <= 1.0 + 1e-4
    assert all(bool((v >= 0).all()) for v in f.values())
    # the null embedding gets gradient through the guided (null) pass
    emb = [n for n in f if "class_embedding" in n][0]
    assert float(f[emb][net.null_class].abs().sum()) > 0
    # a forget-class Fisher vs a remain Fisher gives a proper, non-trivial mask
    xf, yf = x[:4], torch.zeros(4, dtype=torch.long)
    ff = guided_fisher(net, PixelOps(d), xf, yf, batch=4, generator=torch.Generator().manual_seed(1))
    m = fisher_ratio_mask(ff, f)
    frac = sum(float(v.float().sum()) for v in m.values()) / sum(v.numel() for v in m.values())
    assert 0.0 < frac < 1.0
    # rows of classes that appear only in the remain pass can never beat it: 1e-15 / F_r < 1
    row = m[emb][5]
    assert not bool(row.any())


def test_adaptive_weights_sum_to_one_and_favour_small_losses():
    losses = torch.tensor([4.0, 1.0, 9.0, 0.25], requires_grad=True)
    w = adaptive_weights(losses, 0.5)
    assert not w.requires_grad
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    order = torch.argsort(losses.detach())
    assert torch.all(w[order][:-1] > w[order][1:])  # smaller loss -> larger weight
    # lambda = 0.5: w ~ 1/sqrt(l)
    v = 1 / losses.detach().sqrt()
    assert torch.allclose(w, v / v.sum(), atol=1e-6)
    assert torch.allclose(adaptive_weights(losses, 0.0), torch.full((4,), 0.25))


def test_cosine_decay_of_forget_weight():
    assert cosine_alpha(10.0, 0, 150) == pytest.approx(10.0)
    assert cosine_alpha(10.0, 75, 150) == pytest.approx(5.0)
    assert cosine_alpha(10.0, 149, 150) < 0.01
    assert cosine_alpha(10.0, 100, 150, decay=False) == 10.0


def test_forget_step_masks_then_clips(net):
    d = Diffusion()
    net.eval()  # no feature dropout: two identical passes give identical gradients
    torch.manual_seed(3)
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    c = torch.zeros(6, dtype=torch.long)
    t = d.antithetic_t(6)
    noise = torch.randn_like(x)
    params = dict(net.named_parameters())
    # a mask that keeps only a small part of the model: its masked norm is still > 1 with a_f = 10
    names = list(params)
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    for n in names[: len(names) // 3]:
        mask[n] = torch.ones_like(params[n], dtype=torch.bool)
    # raw gradient of -a_f * sum w_i l_i
    losses = d.per_sample_loss(net, x, c, t=t, noise=noise)
    net.zero_grad()
    (-10.0 * (adaptive_weights(losses, 0.5) * losses).sum()).backward()
    raw = named_grads(net)
    masked = {n: raw[n] * mask[n] for n in names}
    norm_masked = math.sqrt(sum(float(v.pow(2).sum()) for v in masked.values()))
    norm_raw = math.sqrt(sum(float(v.pow(2).sum()) for v in raw.values()))
    assert norm_masked > 1.0 and norm_raw > norm_masked * 1.05  # the two orders differ here
    expected = {n: v * min(1.0, 1.0 / (norm_masked + 1e-6)) for n, v in masked.items()}  # mask, then clip
    other = {n: raw[n] * min(1.0, 1.0 / (norm_raw + 1e-6)) * mask[n] for n in names}  # clip, then mask

    forget_grad_(net, d, x, c, mask, a_f=10.0, lambd=0.5, p_drop=0.0, clip=1.0, t=t, noise=noise)
    got = named_grads(net)
    got_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in got.values()))
    assert got_norm == pytest.approx(1.0, rel=1e-4)
    for n in names:
        assert torch.allclose(got[n], expected[n], atol=1e-6, rtol=1e-4)
    diff = sum(float((got[n] - other[n]).abs().sum()) for n in names)
    assert diff > 1e-3
    # masked-out entries carry exactly zero gradient
    assert all(float(got[n][~mask[n]].abs().sum()) == 0.0 for n in names)
    net.zero_grad(set_to_none=True)
    clip_norm_(net.parameters(), 1.0)  # no-op on empty grads


def test_checkpoint_iter_sets_the_budget():
    cfg = SFRon.Config(iters=150, checkpoint_iter=50)
    m = SFRon(cfg)
    assert m.run_iters() == 50 and m.expected_steps() == 100
    assert SFRon(SFRon.Config(iters=150)).expected_steps() == 300
    assert SFRon.steps_per_iter == 2
