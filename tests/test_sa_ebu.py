"""SA and EBU pieces: the per-image Fisher, the EWC term, the min-norm and PCGrad combinations,
EBU's direction assembly and its O(n) top-k selection."""

from __future__ import annotations

import pytest
import torch

from bench.method import resolve_config
from bench.models.diffusion import Diffusion
from bench.models.family import PixelOps
from bench.models.nets import CondUNet
from bench.tasks.digits import DIGITS
from methods._directions import combine_direction, min_norm_coef, min_norm_combine, pcgrad_combine, select_top
from methods._fisher import ewc_penalty, image_fisher
from methods._masks import top_fraction
from methods._replay import stretch_minmax
from methods.ebu import EBU
from methods.sa import SelectiveAmnesia

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CondUNet(DIGITS.unet_config, 10).eval()


# --- min-norm (MGDA) --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_min_norm_interior_point_is_orthogonal_to_the_difference(seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(50, generator=g, dtype=torch.float64)
    v = -0.5 * u + 0.3 * torch.randn(50, generator=g, dtype=torch.float64)  # conflicting: interior
    d, a = min_norm_combine(u, v)
    assert 0.0 < a < 1.0
    assert torch.allclose(d, a * u + (1 - a) * v)  # on the segment
    assert abs(float(d @ (u - v))) < 1e-8 * float((u - v).norm() ** 2)  # orthogonal to u - v
    # it is the minimum-norm point of the segment
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    norms = torch.stack([(s * u + (1 - s) * v).norm() for s in grid])
    assert float(d.norm()) <= float(norms.min()) + 1e-9


def test_min_norm_clamps_at_the_ends_and_equal_inputs():
    u = torch.tensor([1.0, 0.0])
    v = torch.tensor([2.0, 0.0])
    assert min_norm_coef(u, v) == 1.0  # u is the shortest point: a = 1
    d, a = min_norm_combine(v, u)
    assert a == 0.0 and torch.equal(d, u)  # roles swapped: a = 0 picks the second vector
    assert min_norm_coef(u, u.clone()) == 0.5
    d, a = min_norm_combine(u, u.clone())
    assert a == 0.5 and torch.allclose(d, u)


# --- PCGrad -----------------------------------------------------------------------------------------
def test_pcgrad_projects_conflicting_gradients():
    u = torch.tensor([1.0, 0.0])
    v = torch.tensor([-1.0, 1.0])
    d = pcgrad_combine(u, v)
    # u' = u - (u.v/|v|^2) v = (0.5, 0.5); v' = v - (u.v/|u|^2) u = (0, 1)
    assert torch.allclose(d, torch.tensor([0.5, 1.5]))
    g = torch.Generator().manual_seed(1)
    a = torch.randn(30, generator=g, dtype=torch.float64)
    b = torch.randn(30, generator=g, dtype=torch.float64)
    if float(a @ b) > 0:
        b = -b
    dot = float(a @ b)
    a2 = a - dot / float(b @ b) * b
    b2 = b - dot / float(a @ a) * a
    # each projection is orthogonal to the other ORIGINAL vector
    assert abs(float(a2 @ b)) < 1e-10 and abs(float(b2 @ a)) < 1e-10
    assert torch.allclose(pcgrad_combine(a, b), a2 + b2)
    # no conflict: plain sum
    assert torch.allclose(pcgrad_combine(a, -b), a - b)


# --- EBU's direction ---------------------------------------------------------------------------------
def test_combine_direction_assigns_each_region():
    g = torch.Generator().manual_seed(2)
    gf, gr = torch.randn(12, generator=g), torch.randn(12, generator=g)
    m_f = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    m_r = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    d, a = combine_direction(gf, gr, m_f, m_r, "mgda", "none")
    assert torch.equal(d[:3], gf[:3])  # forget-only
    assert torch.equal(d[6:9], gr[6:9])  # remember-only
    assert torch.equal(d[9:], torch.zeros(3))  # neither
    u, v = gf[3:6], gr[3:6]
    assert torch.allclose(d[3:6], a * u + (1 - a) * v) and a == pytest.approx(min_norm_coef(u, v))
    d2, _ = combine_direction(gf, gr, m_f, m_r, "mgda", "remain")
    assert torch.equal(d2[9:], gr[9:]) and torch.equal(d2[:9], d[:9])
    d3, a3 = combine_direction(gf, gr, m_f, m_r, "pcgrad", "none")
    assert torch.allclose(d3[3:6], pcgrad_combine(u, v)) and a3 != a3  # NaN coefficient for PCGrad
    # empty overlap: no combination, a is NaN
    d4, a4 = combine_direction(gf, gr, m_f, ~m_f, "mgda", "none")
    assert a4 != a4 and torch.equal(d4[:6], gf[:6]) and torch.equal(d4[6:], gr[6:])


@pytest.mark.parametrize("ties", [False, True])
def test_select_top_matches_the_shared_top_fraction(ties):
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 4, (997,), generator=g).float() if ties else torch.rand(997, generator=g)
    for ratio in (0.0, 0.1, 0.5, 0.77, 1.0):
        got = select_top(s, ratio)
        assert int(got.sum()) == int(ratio * s.numel())
        assert torch.equal(got, top_fraction({"p": s}, ratio)["p"])


# --- Fisher and EWC ------------------------------------------------------------------------------------
def test_ewc_is_zero_at_the_anchor_and_positive_away(net):
    fisher = {n: torch.rand_like(p) for n, p in net.named_parameters()}
    anchor = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert float(ewc_penalty(net, fisher, anchor).detach()) == 0.0
    name, p = next(iter(net.named_parameters()))
    with torch.no_grad():
        p.add_(0.1)
    try:
        val = float(ewc_penalty(net, fisher, anchor).detach())
        assert val == pytest.approx(float((fisher[name] * 0.01).sum()), rel=1e-3) and val > 0
        mask = {n: torch.zeros_like(q, dtype=torch.bool) for n, q in net.named_parameters()}
        assert float(ewc_penalty(net, fisher, anchor, mask).detach()) == 0.0  # restricted to an empty set
    finally:
        with torch.no_grad():
            p.sub_(0.1)


def test_image_fisher_squares_after_summing_over_timesteps(net):
    d = Diffusion()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    y = torch.tensor([3, 7])
    K = 8
    f = image_fisher(net, PixelOps(d), x, y, timesteps=K, p_drop=0.0, chunk=3,
                     generator=torch.Generator().manual_seed(5))
    # replay the same random draws by hand: per image u, then one noise draw per chunk
    g = torch.Generator().manual_seed(5)
    params = dict(net.named_parameters())
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(2):
        u = torch.rand((), generator=g)
        t_all = ((torch.arange(K) + u) * (1000 / K)).floor().long()
        net.zero_grad()
        for s in range(0, K, 3):
            t = t_all[s:s + 3]
            noise = torch.randn((len(t), 1, 8, 8), generator=g)
            loss = d.per_sample_loss(net, x[i:i + 1].expand(len(t), 1, 8, 8), y[i:i + 1].expand(len(t)), t=t,
                                     noise=noise).sum()
            (loss * 1000 / K).backward()
        for n, p in params.items():
            ref[n] += p.grad.pow(2) / 2
    net.zero_grad(set_to_none=True)
    for n in ref:
        assert torch.allclose(f[n], ref[n], rtol=1e-4, atol=1e-6)
    # squaring after the sum differs from summing per-timestep squares
    assert all(bool((v >= 0).all()) for v in f.values())
    assert sum(float(v.sum()) for v in f.values()) > 0


def test_stretch_minmax_matches_reference_export():
    u8 = torch.tensor([[[[10, 20], [30, 10]]], [[[7, 7], [7, 7]]]], dtype=torch.uint8)
    out = stretch_minmax(u8)
    assert out[0].flatten().tolist() == [0, 128, 255, 0]
    assert torch.equal(out[1], u8[1])  # constant image left alone


def test_configs_and_presets():
    assert EBU.status == "reconstruction" and EBU.version == "ebu-recon-v1" and "RECONSTRUCTION" in EBU.paper
    assert EBU.data_free and SelectiveAmnesia.data_free
    for profile in ("fast", "smoke"):
        e = resolve_config(EBU, DIGITS, DIGITS.profile(profile))
        s = resolve_config(SelectiveAmnesia, DIGITS, DIGITS.profile(profile))
        for key in ("n_replay", "lr", "batch", "iters", "replay_weights", "clip"):
            assert getattr(e, key) == getattr(s, key), (profile, key)
    assert SelectiveAmnesia.Config().iters == 20_000 and SelectiveAmnesia.Config().lam == 10.0


# --- no host reads per iteration ---------------------------------------------------------------------------
def test_meta_tensors_refuse_host_reads():
    """The detector the next test relies on: reading a value of a ``meta`` tensor raises."""
    x = torch.ones(4, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        float(x.sum())
    with pytest.raises((RuntimeError, NotImplementedError)):
        x[x > 0]  # boolean indexing needs the count of selected elements


@pytest.mark.parametrize("balance", ["mgda", "pcgrad"])
@pytest.mark.parametrize("unselected", ["none", "frozen", "remain"])
def test_ebu_per_iteration_pieces_never_wait_for_the_device(balance, unselected):
    """EBU's masks and direction run every iteration on vectors as long as the U-Net: they must only
    queue device work (on a GPU, a host read such as ``float()`` or boolean indexing waits for every
    queued kernel). On ``meta`` tensors any such read raises."""
    n = 1001
    g_f, g_r = torch.randn(n, device="meta"), torch.randn(n, device="meta")
    m_f, m_r = select_top(g_f.abs(), 0.5), select_top(g_r.abs(), 0.3)
    d, a = combine_direction(g_f, g_r, m_f, m_r, balance, unselected)
    assert d.shape == (n,) and d.device.type == "meta" and a.device.type == "meta"
