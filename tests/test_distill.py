"""Unit tests of the SiD/SFD pieces (methods/_distill.py) and of SFD/PECKER's update rules.

Everything runs on tiny random digits U-Nets (no cached assets): a few forward/backward passes each.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.core.measure import Counts
from bench.models.diffusion import Diffusion, sfd_constants
from bench.models.generators import OneStepGenerator
from bench.models.nets import CondUNet
from bench.tasks.digits import DIGITS
from methods import _distill as D
from methods._masks import float_masks, top_fraction
from methods.pecker import PECKER, combine_grads, saliency_mask
from methods.sfd import SFD

SHAPE = (1, 8, 8)


def make_net(seed: int) -> CondUNet:
    torch.manual_seed(seed)
    return CondUNet(DIGITS.unet_config, 10).eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def diffusion() -> Diffusion:
    return Diffusion()


@pytest.fixture(scope="module")
def nets() -> dict[str, CondUNet]:
    nets = {"teacher": make_net(1), "fake": make_net(2), "gen": make_net(3)}
    for k in ("teacher", "fake"):
        for p in nets[k].parameters():
            p.requires_grad_(False)
    return nets


class Recorder(nn.Module):
    """Wraps a network and records the labels and timesteps of every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.null_class = net, net.null_class
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, c):
        self.calls.append((t.detach().clone(), c.detach().clone()))
        return self.net(x, t, c)


# --- constants and the one-step map ------------------------------------------------------------
def test_sfd_constants_at_t_init_440(diffusion):
    a0, b0, s0 = sfd_constants(diffusion, 440)
    assert a0 == pytest.approx(0.37109, abs=2e-5)
    assert b0 == pytest.approx(0.92860, abs=2e-5)
    assert s0 == pytest.approx(2.50233, abs=2e-4)
    g = D.OneStepMap(diffusion, 440)
    assert (g.a0, g.b0, g.sigma0) == (a0, b0, s0)
    assert a0**2 + b0**2 == pytest.approx(1.0, abs=1e-6)


def test_one_step_map_is_tweedie_at_t_init(diffusion, nets):
    g = D.OneStepMap(diffusion, 440)
    z, c = torch.randn(3, *SHAPE), torch.tensor([0, 4, 9])
    t = torch.full((3,), 440)
    with torch.no_grad():
        out = g(nets["gen"], z, c)
        ref = diffusion.x0_from_eps(g.b0 * z, t, nets["gen"](g.b0 * z, t.float(), c))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    rec = Recorder(nets["gen"])
    g(rec, z, c)
    assert torch.equal(rec.calls[0][0], torch.full((3,), 440.0)) and torch.equal(rec.calls[0][1], c)


def test_x_hat(diffusion, nets):
    x_t, t, c = torch.randn(2, *SHAPE), torch.tensor([38, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        e = nets["fake"](x_t, t.float(), c)
        ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        ref = (x_t - (1 - ab).sqrt() * e) / ab.sqrt()
        torch.testing.assert_close(D.x_hat(diffusion, nets["fake"], x_t, t, c), ref)


# --- losses ------------------------------------------------------------------------------------
def test_sg_loss_sum_over_pixels_mean_over_batch_and_t_range(diffusion, nets):
    x0, c = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    t, noise = torch.randint(38, 712, (64,)), torch.randn(64, *SHAPE)
    with torch.no_grad():
        pred = nets["fake"](diffusion.q_sample(x0, t, noise), t.float(), c)
        ref = (noise - pred).pow(2).sum(dim=(1, 2, 3)).mean()
        got = D.sg_loss(diffusion, nets["fake"], x0, c, 38, 712, t=t, noise=noise)
    torch.testing.assert_close(got, ref)
    rec = Recorder(nets["fake"])
    with torch.no_grad():
        D.sg_loss(diffusion, rec, x0, c, 100, 103)
    t_used = rec.calls[0][0]
    # [low, high), and not antithetic
    assert t_used.min() >= 100 and t_used.max() <= 102 and len(t_used.unique()) > 1


def reference_g_loss(diffusion, teacher, fake, x0, c_real, c_fake, alpha, t, noise,
                     detach_omega=True, detach_xt=False):
    """The expanded form ``mean_i [(1 - alpha)|Q_i|^2 + Q_i.(P_i - x0_i)] / omega_i``."""
    x_t = diffusion.q_sample(x0, t, noise)
    if detach_xt:
        x_t = x_t.detach()
    a = D.x_hat(diffusion, teacher, x_t, t, c_real)
    p = D.x_hat(diffusion, fake, x_t, t, c_fake)
    omega = (a - x0).abs().mean(dim=(1, 2, 3)).clamp(min=1e-5)
    if detach_omega:
        omega = omega.detach()
    q = (a - p).flatten(1)
    per = (1 - alpha) * q.pow(2).sum(1) + (q * (p - x0).flatten(1)).sum(1)
    return (per / omega).mean()


@pytest.mark.parametrize("alpha", [1.2, 1.0, 0.5])
def test_g_loss_equals_expanded_form(diffusion, nets, alpha):
    x0 = torch.randn(5, *SHAPE)
    c_real, c_fake = torch.tensor([1, 1, 2, 3, 4]), torch.tensor([0, 1, 2, 5, 4])
    t, noise = torch.randint(38, 712, (5,)), torch.randn(5, *SHAPE)
    with torch.no_grad():
        got = D.g_loss(diffusion, nets["teacher"], nets["fake"], x0, c_real, c_fake, alpha, 38, 712, t, noise)
        ref = reference_g_loss(diffusion, nets["teacher"], nets["fake"], x0, c_real, c_fake, alpha, t, noise)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_g_loss_gradient_omega_stopgrad_and_through_x_t(diffusion, nets):
    x0 = torch.randn(4, *SHAPE)
    c = torch.tensor([1, 2, 3, 4])
    t, noise = torch.randint(38, 712, (4,)), torch.randn(4, *SHAPE)
    args = (diffusion, nets["teacher"], nets["fake"])

    def grad(fn, **kw):
        x = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(*args, x, c, c, 1.2, t=t, noise=noise, **kw), x)
        return g

    got = grad(lambda *a, **k: D.g_loss(*a[:6], 1.2, 38, 712, **k))
    want = grad(reference_g_loss)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the alternatives (omega differentiated, or no gradient through x_t) give other gradients
    assert not torch.allclose(got, grad(reference_g_loss, detach_omega=False), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(got, grad(reference_g_loss, detach_xt=True), rtol=1e-3, atol=1e-4)
    # frozen score networks receive no parameter gradient
    assert all(p.grad is None for k in ("teacher", "fake") for p in nets[k].parameters())


def test_g_loss_weight_is_clamped(diffusion, nets):
    """With a teacher that reproduces x0 exactly (A = x0), omega = 1e-5 and the loss stays finite."""

    class Oracle(nn.Module):
        null_class = 10

        def __init__(self, x0):
            super().__init__()
            self.x0 = x0

        def forward(self, x, t, c):  # eps such that x_hat = x0
            ab = diffusion.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
            return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()

    x0 = torch.randn(2, *SHAPE)
    with torch.no_grad():
        val = D.g_loss(diffusion, Oracle(x0), nets["fake"], x0, torch.tensor([1, 2]), torch.tensor([1, 2]),
                       1.2, 38, 712)
    assert torch.isfinite(val)


# --- clipping and EMA --------------------------------------------------------------------------
def test_clip_value_is_elementwise_not_norm():
    p = nn.Parameter(torch.zeros(4))
    q = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([-5.0, 0.5, 3.0, -0.2])
    D.clip_value_([p, q], 1.0)  # q has no grad: skipped
    assert torch.equal(p.grad, torch.tensor([-1.0, 0.5, 1.0, -0.2]))
    assert q.grad is None


def test_ema_update():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    D.ema_update_(a, b, 0.9)
    for s0, s, p in zip(before, a.parameters(), b.parameters()):
        torch.testing.assert_close(s, 0.9 * s0 + 0.1 * p)


# --- the iteration pieces on a minimal context ---------------------------------------------------
class FakeCtx:
    """The parts of UnlearnContext that SFD/PECKER use, over random tiny nets."""

    kind = "class"

    def __init__(self, diffusion, forget=3, iters_seen=None):
        self.diffusion, self.device, self.image_shape = diffusion, torch.device("cpu"), SHAPE
        self.forget_class, self.cover_class, self.num_classes = forget, (forget + 1) % 10, 10
        self.remain_classes = [c for c in range(10) if c != forget]
        self.counts = Counts(enabled=True)
        self._base = make_net(7)
        self.nets: dict[str, nn.Module] = {}
        self.logs: list[dict] = []

    def base_model(self, weights="raw", name="model", trainable=True):
        assert weights == "ema"
        net = self._base.clone()
        net.train(trainable)
        for p in net.parameters():
            p.requires_grad_(trainable)
        self.nets[name] = net
        return net

    def clone(self, net, name, trainable=True):
        twin = net.clone()
        if not trainable:
            twin.eval()
            for p in twin.parameters():
                p.requires_grad_(False)
        self.nets[name] = twin
        return twin

    def optimizer(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, kind="adam"):
        return torch.optim.Adam(list(params), lr=lr, betas=betas, eps=eps)

    def steps(self, n, probe=None):
        assert isinstance(probe(), OneStepGenerator)
        yield from range(n)

    def remain_labels(self, batch):
        while True:
            yield torch.tensor(self.remain_classes * batch)[torch.randperm(9 * batch)[:batch]]

    def forget_batches(self, batch):
        while True:
            yield torch.rand(batch, *SHAPE) * 2 - 1, self.labels(self.forget_class, batch)

    def labels(self, cls, n):
        return torch.full((n,), cls, dtype=torch.long)

    def log(self, **values):
        as_float = {k: float(v.detach()) for k, v in values.items() if isinstance(v, torch.Tensor)}
        self.logs.append({**values, **as_float})

    def one_step(self, net, fn, weights="ema"):
        return OneStepGenerator(net, fn, self.image_shape, weights)


def small_cfg(cls, **kw):
    base = dict(iters=2, batch=3, lr_psi=1e-3, lr_theta=1e-3, ema=0.5)
    return dataclasses.replace(cls.Config(), **{**base, **kw})


def test_forget_branch_teacher_at_cover_fake_at_forget(diffusion):
    ctx = FakeCtx(diffusion, forget=3)
    cfg = small_cfg(SFD, mu_theta=1.0)
    st = D.build_state(ctx, cfg)
    st.teacher, st.fake = Recorder(st.teacher), Recorder(st.fake)
    c_r = torch.tensor([0, 5, 9, 1])
    D.begin_generator_step(st)
    l_d, l_f, x_f = D.generator_terms(ctx, st, cfg, c_r, 0)
    assert l_f is not None and x_f.requires_grad
    (t_r, teacher_r), (_, teacher_f) = st.teacher.calls
    (_, fake_r), (_, fake_f) = st.fake.calls
    assert torch.equal(teacher_r, c_r) and torch.equal(fake_r, c_r)
    assert torch.equal(teacher_f, torch.full((4,), 4)) and torch.equal(fake_f, torch.full((4,), 3))
    assert t_r.min() >= cfg.t_min and t_r.max() < cfg.t_max
    # mu_theta = 0 skips the forget generation entirely
    st.teacher.calls.clear()
    _, l_f0, _ = D.generator_terms(ctx, st, dataclasses.replace(cfg, mu_theta=0.0), c_r, 0)
    assert l_f0 is None and len(st.teacher.calls) == 1


def test_random_override_draws_remaining_classes(diffusion):
    ctx = FakeCtx(diffusion, forget=3)
    labels = D.override_labels(SimpleNamespace(random_override=True), ctx, 2000)
    assert set(labels.tolist()) == set(ctx.remain_classes)
    assert torch.equal(D.override_labels(SimpleNamespace(random_override=False), ctx, 5), torch.full((5,), 4))


def test_forget_warmup_t_range():
    cfg = SFD.Config(iters=100, forget_warmup=0.1)
    assert D.forget_t_range(cfg, 9) == (20, 980)
    assert D.forget_t_range(cfg, 10) == (cfg.t_min, cfg.t_max)


def test_fake_score_step_uses_generator_samples_of_both_classes(diffusion):
    ctx = FakeCtx(diffusion, forget=2)
    cfg = small_cfg(SFD, mu_psi=0.5)
    st = D.build_state(ctx, cfg)
    gen = Recorder(st.gen)
    st.gen = gen
    before = [p.detach().clone() for p in st.fake.parameters()]
    c_r = torch.tensor([0, 1, 3, 4])
    out = D.fake_score_step(ctx, st, cfg, c_r, 0)
    assert set(out) == {"loss_sg_r", "loss_sg_f"} and all(torch.isfinite(v) for v in out.values())
    assert torch.equal(gen.calls[0][1], c_r) and torch.equal(gen.calls[1][1], torch.full((4,), 2))
    assert any(not torch.equal(b, p) for b, p in zip(before, st.fake.parameters()))
    assert all(p.grad is None for p in st.gen.parameters())  # generator samples carry no gradient


def test_saliency_mask_selects_floor_rho_n(diffusion):
    ctx = FakeCtx(diffusion)
    cfg = small_cfg(PECKER, mask_ratio=0.3)
    st = D.build_state(ctx, cfg)
    x_f = torch.randn(4, *SHAPE, requires_grad=True)
    mask = saliency_mask(ctx, st, cfg, x_f * 1.0, None, 4)
    n = sum(p.numel() for p in st.gen.parameters())
    assert int(sum(m.sum() for m in mask.values())) == math.floor(0.3 * n)
    assert all(p.grad is None for p in st.gen.parameters())  # autograd.grad leaves .grad untouched
    assert x_f.grad is None


@pytest.mark.parametrize("scope", ["forget_only", "all"])
def test_pecker_mask_applies_to_forget_gradient_only(scope):
    net = nn.Linear(4, 3)
    st = SimpleNamespace(gen=net, opt_gen=torch.optim.SGD(net.parameters(), lr=0.0))
    cfg = SimpleNamespace(mask_scope=scope, clip_value=100.0)
    g_d = [torch.randn_like(p) for p in net.parameters()]
    g_fg = [torch.randn_like(p) for p in net.parameters()]
    mask = top_fraction({n: torch.rand_like(p) for n, p in net.named_parameters()}, 0.5)
    PECKER._single_update(st, cfg, g_d, g_fg, float_masks(mask, net))
    for i, (n, p) in enumerate(net.named_parameters()):
        m = mask[n].float()
        want = g_d[i] + m * g_fg[i] if scope == "forget_only" else m * (g_d[i] + g_fg[i])
        torch.testing.assert_close(p.grad, want)


@pytest.mark.parametrize("scope", ["forget_only", "all"])
def test_pecker_gradient_assembly_reads_nothing_back(scope):
    """The per-iteration gradient assembly only queues device work: on the ``meta`` device any read
    of a value (``float()``, ``bool()``, boolean indexing) raises."""
    shapes = [(8, 4), (8,), (3, 3, 2, 2)]
    g_d = [torch.randn(s, device="meta") for s in shapes]
    g_fg = [torch.randn(s, device="meta") for s in shapes]
    mask = [torch.ones(s, device="meta") for s in shapes]
    out = combine_grads(g_d, g_fg, mask, scope)
    assert [o.shape for o in out] == [torch.Size(s) for s in shapes] and out[0].device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        float(out[0].sum())  # the detector works: a host read on meta fails


def changed_fraction(before, net):
    changed = sum(int((b != p.detach()).sum()) for b, p in zip(before, net.parameters()))
    return changed / sum(b.numel() for b in before)


@pytest.mark.parametrize("two_copy", [False, True])
def test_pecker_forget_update_moves_only_salient_weights(diffusion, two_copy):
    """With no retain term the generator update is m * g_fg: with Adam(beta1 = 0) at most
    floor(rho N) weights move; with no forget term every weight may move (retain unmasked)."""
    ctx = FakeCtx(diffusion)
    cfg = small_cfg(PECKER, iters=1, lambda_theta=0.0, mask_ratio=0.25, two_copy=two_copy)
    PECKER(cfg).unlearn(ctx)
    gen = ctx.nets["generator"]
    assert 0.05 < changed_fraction(list(ctx._base.parameters()), gen) <= 0.25
    ctx2 = FakeCtx(diffusion)
    PECKER(small_cfg(PECKER, iters=1, mu_theta=0.0, two_copy=two_copy)).unlearn(ctx2)
    assert changed_fraction(list(ctx2._base.parameters()), ctx2.nets["generator"]) > 0.6


@pytest.mark.parametrize("name,cls,kw", [
    ("sfd", SFD, {"random_override": True, "forget_warmup": 0.5}),
    ("pecker", PECKER, {}),
    ("pecker-real-all", PECKER, {"saliency_data": "real", "mask_scope": "all", "mask_refresh_every": 2}),
    ("pecker-two-copy-partition", PECKER, {"two_copy": True, "two_copy_merge": "partition"}),
])
def test_methods_run_and_count_two_steps_per_iteration(diffusion, name, cls, kw):
    ctx = FakeCtx(diffusion)
    method = cls(small_cfg(cls, iters=2, **kw))
    with ctx.counts.counting_optimizer_steps():
        gen = method.unlearn(ctx)
    assert ctx.counts.optimizer_steps == method.expected_steps() == 4
    assert isinstance(gen, OneStepGenerator) and gen.nfe == 1 and gen.weights == "ema"
    assert gen.net is ctx.nets["generator_ema"]
    imgs = gen.sample(torch.tensor([0, 3, 5]), seed=0)
    assert imgs.shape == (3, *SHAPE) and imgs.dtype == torch.uint8
    assert len(ctx.logs) == 2 and all(math.isfinite(float(v)) for row in ctx.logs for v in row.values())
    # the EMA moved away from the initial weights, the teacher did not; with mask_scope="all" and one
    # mask for both iterations (refresh every 2) at most half of the weights can move
    moved = changed_fraction(list(ctx._base.parameters()), ctx.nets["generator_ema"])
    assert 0.2 < moved <= 0.5 if kw.get("mask_scope") == "all" else moved > 0.5
    assert changed_fraction(list(ctx._base.parameters()), ctx.nets["teacher"]) == 0.0


def test_method_metadata():
    for cls in (SFD, PECKER):
        assert cls.steps_per_iter == 2 and cls.output == "one-step" and cls.data_free
        assert set(cls.presets) >= {"fast", "smoke"}
    assert PECKER.status == "paper"
    assert SFD.Config().mu_theta == 0.01 and PECKER.Config().mu_theta == 1.0
    for key in ("iters", "batch", "lr_psi", "lr_theta", "ema"):  # same budget so the two are comparable
        assert SFD.presets["fast"][key] == PECKER.presets["fast"][key]
