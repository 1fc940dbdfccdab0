from __future__ import annotations

import torch

from bench.models.diffusion import Diffusion, sfd_constants, to_uint8
from bench.models.generators import DiffusionSampler, OneStepGenerator


def test_schedule_matches_reference_constants():
    d = Diffusion()
    assert d.betas[0].item() == torch.tensor(1e-4).item()
    a0, b0, s0 = sfd_constants(d, 440)
    assert abs(a0 - 0.37109) < 1e-5 and abs(b0 - 0.92860) < 1e-5 and abs(s0 - 2.50233) < 1e-5


def test_antithetic_pairs_sum_to_T_minus_1():
    d = Diffusion()
    t = d.antithetic_t(9, torch.Generator().manual_seed(0))
    assert t.shape == (9,)
    half = 9 // 2 + 1
    assert torch.all(t[: 9 - half] + t[half:] == 999)


def test_loss_reductions_sum_over_pixels_mean_over_batch(tiny_net):
    d = Diffusion()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    c = torch.tensor([0, 1, 2, 3])
    t = torch.tensor([10, 200, 500, 999])
    noise = torch.randn_like(x0)
    per = d.per_sample_loss(tiny_net, x0, c, 0.0, t, noise)
    manual = (noise - tiny_net(d.q_sample(x0, t, noise), t.float(), c)).pow(2)
    assert torch.allclose(per, manual.flatten(1).sum(1), rtol=1e-5)
    simple = d.simple_loss(tiny_net, x0, c, 0.0, t, noise)
    assert torch.allclose(simple, per.mean())
    mse = torch.nn.functional.mse_loss(tiny_net(d.q_sample(x0, t, noise), t.float(), c), noise)
    assert torch.allclose(simple / mse, torch.tensor(64.0), rtol=1e-4)  # C*H*W = 64


def test_label_dropout_rates(tiny_net):
    c = torch.zeros(20000, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(Diffusion.drop_labels(tiny_net, c, 0.0), c)
    assert torch.all(Diffusion.drop_labels(tiny_net, c, 1.0) == tiny_net.null_class)
    frac = (Diffusion.drop_labels(tiny_net, c, 0.1, g) == tiny_net.null_class).float().mean()
    assert abs(frac - 0.1) < 0.01


def test_cfg_is_the_one_plus_w_form(tiny_net):
    d = Diffusion()
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 500]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        e_c = tiny_net(x, t.float(), c)
        e_u = tiny_net(x, t.float(), torch.full_like(c, 10))
        assert torch.allclose(d.cfg_eps(tiny_net, x, t, c, 0.0), e_c)
        assert torch.allclose(d.cfg_eps(tiny_net, x, t, c, 2.0), 3 * e_c - 2 * e_u, atol=1e-5)


def test_samples_do_not_depend_on_batch_size(tiny_net):
    d = Diffusion()
    labels = torch.tensor([0, 0, 3, 7, 3])
    s_big = DiffusionSampler(tiny_net, d, 5, 0.5, 1.0, (1, 8, 8), batch_size=5).sample(labels, seed=3)
    s_one = DiffusionSampler(tiny_net, d, 5, 0.5, 1.0, (1, 8, 8), batch_size=1).sample(labels, seed=3)
    assert s_big.dtype == torch.uint8 and s_big.shape == (5, 1, 8, 8)
    assert (s_big.int() - s_one.int()).abs().max() <= 1  # float reassociation may flip one rounding
    other_seed = DiffusionSampler(tiny_net, d, 5, 0.5, 1.0, (1, 8, 8)).sample(labels, seed=4)
    assert not torch.equal(s_big, other_seed)


def test_one_step_generator_counts_one_nfe_and_maps_to_uint8(tiny_net):
    gen = OneStepGenerator(tiny_net, lambda net, z, c: torch.tanh(z), (1, 8, 8))
    out = gen.sample(torch.tensor([1, 2]), seed=0)
    assert gen.nfe == 1 and out.dtype == torch.uint8 and out.shape == (2, 1, 8, 8)


def test_to_uint8_endpoints():
    assert to_uint8(torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]


def test_progress_bar_counts_every_step_and_changes_no_image(tiny_net, monkeypatch):
    import io

    import bench.models.generators as generators

    counts = []
    real = generators.tqdm

    class Bar(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "disable": False, "file": io.StringIO()})
            counts.append(self)

    monkeypatch.setattr(generators, "tqdm", Bar)
    d = Diffusion()
    labels = torch.arange(10).repeat(2)
    plain = DiffusionSampler(tiny_net, d, 5, 1.0, 1.0, (1, 8, 8), batch_size=8).sample(labels, seed=3)
    shown = DiffusionSampler(tiny_net, d, 5, 1.0, 1.0, (1, 8, 8), batch_size=8, progress="x").sample(labels, seed=3)
    assert torch.equal(plain, shown)
    assert len(counts) == 1 and counts[0].total == 3 * 5 and counts[0].n == 3 * 5  # 3 batches of 5 steps
