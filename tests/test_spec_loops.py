"""The update rules of the unlearning loops, checked against methods.md (not against the code's helpers).

Each test runs a method for a few iterations on the cached digits base model (8x8 grey images, so
C*H*W = 64) and observes it from outside: optimizer-step hooks record the gradient each step is fed
and the weights right after it, spies on the diffusion losses record their inputs, spies on the
mask builders capture the mask a method actually uses. Every expected value is derived from the
spec's formulas (the DDPM forward process, Adam's first step, the top-fraction rule, the EMA
recursion) with direct network calls; the code's own helpers are only observed, never used to
compute an expectation.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import methods.ebu
import methods.salun
import methods.sfron
from bench.method import METHODS, resolve_config
from bench.models.diffusion import Diffusion
from bench.tasks.digits import DIGITS
from methods._relabel import relabel_forget_loss
from methods._replay import budget_decay

# the schedule of methods.md §1.1, computed here (float64, then cast)
ALPHA_BAR = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
PIXELS = 1 * 8 * 8  # C*H*W of the digits task


# --- helpers --------------------------------------------------------------------------------------
def flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).clone()


def flat_params(net) -> Tensor:
    return flat(net.parameters())


def flat_mask(mask: dict, net) -> Tensor:
    return torch.cat([mask[n].reshape(-1).bool() for n, _ in net.named_parameters()])


def load_flat(net, vec: Tensor):
    off = 0
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(vec[off:off + p.numel()].view_as(p))
            off += p.numel()
    return net


def q(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward noising of methods.md §1.1."""
    ab = ALPHA_BAR[t.long()].view(-1, *([1] * (x0.ndim - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def l_simple(net, x0, c, t, noise) -> Tensor:
    """L_simple of methods.md §1.3 with p_drop = 0: SUM over pixels, MEAN over the batch."""
    pred = net(q(x0, t, noise), t.float(), c)
    return (noise - pred).pow(2).flatten(1).sum(1).mean()


def fixed_inputs(x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (len(x),), generator=g), torch.randn(x.shape, generator=g)


def config(name: str, overrides: dict | None = None, iters: int = 3):
    cls = METHODS.get(name)
    return cls, resolve_config(cls, DIGITS, DIGITS.profile("smoke"), overrides or {}, iters=iters)


def on_uint8_grid(x: Tensor) -> bool:
    k = (x + 1) * 127.5
    return bool(torch.all((k - k.round()).abs() < 1e-3)) and bool(torch.all((k >= -1e-3) & (k <= 255 + 1e-3)))


class Steps:
    """For every optimizer step: the optimizer object, the gradient it is fed (pre-hook), the weights
    right after it (post-hook), and optionally Adam's moments after it; all as flat vectors in the
    optimizer's parameter order."""

    def __init__(self, moments: bool = False) -> None:
        self.opts, self.grads, self.after, self.moments = [], [], [], []
        self._want_moments = moments

    @staticmethod
    def _params(opt):
        return [p for group in opt.param_groups for p in group["params"]]

    def _pre(self, opt, args, kwargs):
        self.grads.append(flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params(opt)))

    def _post(self, opt, args, kwargs):
        ps = self._params(opt)
        self.opts.append(opt)
        self.after.append(flat(ps))
        if self._want_moments:
            m = flat(opt.state[p]["exp_avg"] if p in opt.state else torch.zeros_like(p) for p in ps)
            v = flat(opt.state[p]["exp_avg_sq"] if p in opt.state else torch.zeros_like(p) for p in ps)
            self.moments.append((m, v))

    def __enter__(self):
        self._handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def watch_context(monkeypatch, ctx):
    """Record the optimizers a method creates and the trainable networks it is handed; ``state['loop']``
    becomes True once the first optimizer exists (the unlearning loop starts; setup passes are over)."""
    state = {"loop": False, "opts": [], "nets": []}
    make_opt, make_net = ctx.optimizer, ctx.base_model

    def optimizer(*args, **kwargs):
        opt = make_opt(*args, **kwargs)
        state["opts"].append(opt)
        state["loop"] = True
        return opt

    def base_model(weights="raw", name="model", trainable=True):
        net = make_net(weights, name=name, trainable=trainable)
        if trainable:
            state["nets"].append(net)
        return net

    monkeypatch.setattr(ctx, "optimizer", optimizer)
    monkeypatch.setattr(ctx, "base_model", base_model)
    return state


def spy_losses(monkeypatch, active, fill: bool = False):
    """Record ``(x0, c, p_drop, t, noise)`` of every ``Diffusion.per_sample_loss`` call while
    ``active()`` (``simple_loss`` goes through it). ``t``/``noise`` are recorded as passed (None when
    drawn inside); with ``fill`` the spy draws them itself, the same way, and passes them on, so the
    exact inputs are known."""
    calls = []
    orig = Diffusion.per_sample_loss

    def spy(self, net, x0, c, p_drop=0.0, t=None, noise=None, generator=None):
        if active():
            if fill:
                if t is None:
                    t = self.antithetic_t(x0.shape[0], generator)
                if noise is None:
                    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            calls.append({"x": x0.detach().clone(), "c": c.detach().clone(), "p_drop": p_drop,
                          "t": None if t is None else t.detach().clone(),
                          "noise": None if noise is None else noise.detach().clone()})
        return orig(self, net, x0, c, p_drop, t, noise, generator)

    monkeypatch.setattr(Diffusion, "per_sample_loss", spy)
    return calls


def spy_return(monkeypatch, module, name):
    """Wrap ``module.name`` so every result it returns is recorded (and returned unchanged)."""
    seen = []
    orig = getattr(module, name)

    def spy(*args, **kwargs):
        out = orig(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(module, name, spy)
    return seen


# --- 1. GA's sign (§5) and FT's descent (§4) --------------------------------------------------------
def test_ga_ascends_the_forget_loss_while_ft_descends_the_remain_loss(make_ctx, assets):
    """methods.md §5: GA minimises L = -L_simple(θ; x_f, c_f) (pure GA, α = 0), i.e. it is gradient
    ASCENT on the forget-class diffusion loss; §4: FT is plain descent of L_simple on D_r. Measured on
    fixed (x, t, ε) with p_drop = 0 by direct network calls, a few GA iterations (lr 1e-4) must raise the forget
    loss and the same number of FT iterations must lower the remain loss.
    Fails for: a sign flip in GA (descent on D_f), or FT ascending."""
    torch.manual_seed(0)
    base = assets.base("raw").eval()
    iters, lr = 8, 1e-4  # the reference lr of both (§4, §5)

    ctx = make_ctx(0)
    xf, yf = ctx.forget_data()
    tf, nf = fixed_inputs(xf, 1)
    cls, cfg = config("ga", {"lr": lr}, iters)
    assert cfg.alpha == 0.0  # pure GA is the harness default (§5 table)
    with torch.no_grad():
        f_before = float(l_simple(base, xf, yf, tf, nf))
    with ctx.counts.counting_optimizer_steps():
        net = cls(cfg).unlearn(ctx).net.eval()
    with torch.no_grad():
        f_after = float(l_simple(net, xf, yf, tf, nf))
    assert ctx.counts.optimizer_steps == iters
    assert f_after > 1.3 * f_before, (f_before, f_after)

    # The base model is converged on D_r, so FT from it has (by design) almost nothing left to descend;
    # start FT from a perturbed copy instead, where descent has a clear direction.
    ctx = make_ctx(0)
    handed_out = ctx.base_model
    start = []

    def perturbed(*args, **kwargs):
        net = handed_out(*args, **kwargs)
        with torch.no_grad():
            g = torch.Generator().manual_seed(7)
            for p in net.parameters():
                p.add_(0.3 * p.detach().std().nan_to_num() * torch.randn(p.shape, generator=g))
        start.append(net.clone())
        return net

    ctx.base_model = perturbed
    xr, yr = ctx.remain_data()
    xr, yr = xr[:512], yr[:512]
    tr, nr = fixed_inputs(xr, 2)
    cls, cfg = config("ft", {"lr": lr}, iters)
    with ctx.counts.counting_optimizer_steps():
        net = cls(cfg).unlearn(ctx).net.eval()
    with torch.no_grad():
        r_base = float(l_simple(base, xr, yr, tr, nr))
        r_before = float(l_simple(start[0].eval(), xr, yr, tr, nr))
        r_after = float(l_simple(net, xr, yr, tr, nr))
    assert r_before > 1.1 * r_base, (r_base, r_before)  # the perturbation made room to descend
    assert r_after < r_before - 0.25 * (r_before - r_base), (r_base, r_before, r_after)


# --- 2. RL/SalUn forget loss (§7.3) ------------------------------------------------------------------
class Recorder(torch.nn.Module):
    """Forwards to the real network; records each call's labels, whether grad mode was on, and
    whether any (nonzero) gradient flowed back into that call's output."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.null_class = inner.null_class
        self.calls: list[dict] = []

    def forward(self, x, t, c):
        out = self.inner(x, t, c)
        rec = {"c": c.detach().clone(), "grad_mode": torch.is_grad_enabled(), "reached": False}
        if out.requires_grad:
            def hook(g, rec=rec):
                rec["reached"] = rec["reached"] or bool(g.abs().sum() > 0)
            out.register_hook(hook)
        self.calls.append(rec)
        return out


def test_relabel_forget_loss_is_an_element_mean_with_a_stop_gradient_target(make_ctx, assets):
    """methods.md §7.3 (RL §6 reuses it): with x_t = q(x_f, t, ε) and c' = (c_f + 1) mod 10,
    L_f = mean over ALL B·C·H·W elements of (stopgrad(ε(θ; x_t, t, c')) − ε(θ; x_t, t, c_f))².
    Checked with fixed t, ε and p_drop = 0 against direct network calls; the element MEAN is 64×
    smaller than a per-pixel SUM on 8×8 digits; the gradient flows only through the c_f pass, so
    the class-embedding row of c' gets exactly zero gradient and c_f's row does not, and a recording
    network sees the c_f pass run with gradients and no gradient reach the c' pass.
    Fails for: a pixel-SUM reduction, swapped roles of c_f / c', a target that is not detached, a
    wrong pseudo-label."""
    torch.manual_seed(0)
    c_f = 9
    cover = (c_f + 1) % 10  # = 0: the wrap-around
    ctx = make_ctx(c_f)
    net = assets.base("raw").eval()
    x, c = ctx.forget_data()
    x, c = x[:16], c[:16]
    assert bool((c == c_f).all())
    t, noise = fixed_inputs(x, 3)

    loss = relabel_forget_loss(ctx, net, x, c, ctx.cond("cover", len(x)), 0.0, t, noise)
    with torch.no_grad():
        x_t = q(x, t, noise)
        diff = net(x_t, t.float(), torch.full_like(c, cover)) - net(x_t, t.float(), c)
        elem_mean = diff.pow(2).mean()
        pix_sum = diff.pow(2).flatten(1).sum(1).mean()
    assert diff.numel() == 16 * PIXELS
    assert float(loss.detach()) == pytest.approx(float(elem_mean), rel=1e-5)
    assert float(pix_sum) == pytest.approx(PIXELS * float(loss.detach()), rel=1e-5)  # a SUM would be 64x larger

    net.zero_grad(set_to_none=True)
    loss.backward()
    g = net.unet.class_embedding.weight.grad
    assert torch.all(g[cover] == 0)  # stop-gradient target: c' gets nothing
    assert float(g[c_f].abs().sum()) > 0
    others = [k for k in range(g.shape[0]) if k != c_f]
    assert torch.all(g[others] == 0)  # p_drop = 0: not even the null row

    rec = Recorder(assets.base("raw").eval())
    relabel_forget_loss(ctx, rec, x, c, ctx.cond("cover", len(x)), 0.0, t, noise).backward()
    assert len(rec.calls) == 2
    by_label = {int(r["c"][0]): r for r in rec.calls}
    assert set(by_label) == {c_f, cover} and all(bool((r["c"] == r["c"][0]).all()) for r in rec.calls)
    assert by_label[c_f]["grad_mode"] and by_label[c_f]["reached"]
    # the c' pass is a stop-gradient target: no gradient flows back into it (run under no_grad, or
    # detached: both are a stop-gradient, so grad mode itself is not required to be off)
    assert not by_label[cover]["reached"]


# --- 3. SalUn's masked loop (§7.3) ---------------------------------------------------------------------
def test_salun_clips_then_masks_and_only_masked_weights_move(make_ctx, assets, monkeypatch):
    """methods.md §7.3 with §1.5/§1.6: the mask has exactly ⌊0.5·N⌋ ones (global top-50%); every
    iteration clips the global gradient norm to 1 FIRST, THEN multiplies by the mask, then takes an
    Adam step; so masked-out weights never leave θ0. Adam's first step is −lr·g/(|g| + 1e-8) of the
    fed gradient g: exactly 0 off the mask, ≈ −lr·sign(g) on it. The fed gradient equals
    mask ⊙ g_raw · min(1, m/(‖g_raw‖ + 1e-6)) with the FULL (unmasked) norm ‖g_raw‖ (clip m).
    Fails for: mask-then-clip (the clip factor would use the masked norm, and the masked-out part of
    the gradient would already be zero when clipping), no mask, masking after the step, a mask with
    the wrong count."""
    torch.manual_seed(0)
    ctx = make_ctx(0)
    state = watch_context(monkeypatch, ctx)
    masks = spy_return(monkeypatch, methods.salun, "salun_mask")
    clip_calls = []
    orig_clip = torch.nn.utils.clip_grad_norm_

    def clip_spy(parameters, max_norm, *args, **kwargs):
        ps = list(parameters) if not isinstance(parameters, Tensor) else [parameters]
        if state["loop"]:
            clip_calls.append((flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in ps), max_norm))
        return orig_clip(ps, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_spy)
    iters = 3
    # clip 0.1 instead of 1.0: the raw gradient norm at θ0 is ~0.34 on digits, and the order of clip
    # and mask only shows when clipping acts (the rule itself does not depend on the threshold)
    cls, cfg = config("salun", {"clip": 0.1}, iters)
    with ctx.counts.counting_optimizer_steps(), Steps() as steps:
        gen = cls(cfg).unlearn(ctx)

    base = assets.base("raw")
    theta0 = flat_params(base)
    assert len(masks) == 1
    m = flat_mask(masks[0], base)
    n = m.numel()
    assert n == theta0.numel()
    assert int(m.sum()) == math.floor(0.5 * n)
    moved = flat_params(gen.net) != theta0
    assert int(moved.sum()) > 0
    assert not bool((moved & ~m).any()), "a weight outside the saliency mask moved"
    assert len(steps.after) == iters

    # first step: clip THEN mask
    lr = cfg.lr
    g_raw, max_norm = clip_calls[0]
    assert max_norm == cfg.clip
    norm = float(g_raw.norm())
    assert norm > 1.5 * max_norm, "clipping must be active for the order to matter"
    assert float(g_raw[~m].abs().sum()) > 0, "mask already applied when clipping"
    g_fed = steps.grads[0]
    expected = torch.where(m, g_raw, torch.zeros_like(g_raw)) * min(1.0, max_norm / (norm + 1e-6))
    assert torch.allclose(g_fed, expected, rtol=1e-4, atol=1e-12)
    # mask-then-clip would have fed a gradient of norm exactly 1
    assert float(g_fed.norm()) < 0.999 * max_norm
    delta = steps.after[0] - theta0
    assert torch.all(delta[~m] == 0) and torch.all(g_fed[~m] == 0)
    assert torch.allclose(delta, -lr * g_fed / (g_fed.abs() + 1e-8), rtol=1e-3, atol=1e-7)
    big = m & (g_fed.abs() > 1e-6)
    assert int(big.sum()) > 0.5 * int(m.sum())
    assert torch.allclose(delta[big], -lr * torch.sign(g_fed[big]), rtol=2e-2)


# --- 4. SFR-on's loop (§8.3) -----------------------------------------------------------------------------
def _grad_at(assets, theta: Tensor, x, c, t, noise) -> Tensor:
    net = load_flat(assets.base("raw").train(), theta)
    net.zero_grad(set_to_none=True)
    l_simple(net, x, c, t, noise).backward()
    return flat(p.grad for p in net.parameters())


def _cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b) / (float(a.norm()) * float(b.norm()) + 1e-30)


def test_sfron_one_shared_adam_masked_ascent_then_unmasked_descent(make_ctx, assets, monkeypatch):
    """methods.md §8.3: ONE Adam serves both sub-steps, so each iteration makes two optimizer steps
    (state['step'] = 2·iters for every parameter); per iteration the FIRST step is the masked forget
    ascent (backprop −a_f·L_ada on a D_f batch, grad ⊙ mask, then clip) and the SECOND the unmasked
    remain descent (α_r·L_simple on a D_r batch). Hence, per §1.5 and the "Consequences" of §8.3: in
    the very first fast step masked-out weights have zero gradient and zero Adam moments and do not
    move; in the fast step of a LATER iteration they still get zero gradient but DO move, carried by
    the momentum the shared Adam collected in the remain steps (a property of the reference).
    Fails for: two separate Adam instances (per-optimizer step counts of iters, and masked-out
    weights never moving in the fast step), swapped sub-step order, a missing mask, descent on D_f."""
    torch.manual_seed(0)
    ctx = make_ctx(0)
    state = watch_context(monkeypatch, ctx)
    masks = spy_return(monkeypatch, methods.sfron, "fisher_ratio_mask")
    losses = spy_losses(monkeypatch, lambda: state["loop"], fill=True)
    iters = 3
    cls, cfg = config("sfron", {}, iters)
    with ctx.counts.counting_optimizer_steps(), Steps(moments=True) as steps:
        cls(cfg).unlearn(ctx)

    # one Adam instance, two steps per iteration, all of them on it
    assert len(state["opts"]) == 1
    opt = state["opts"][0]
    assert isinstance(opt, torch.optim.Adam)
    assert len(steps.opts) == 2 * iters and all(o is opt for o in steps.opts)
    assert ctx.counts.optimizer_steps == 2 * iters
    params = [p for g in opt.param_groups for p in g["params"]]
    assert params and all(float(opt.state[p]["step"]) == 2 * iters for p in params)

    base = assets.base("raw")
    theta0 = flat_params(base)
    assert len(masks) == 1
    m = flat_mask(masks[0], base)
    assert 0 < int(m.sum()) < m.numel()  # a non-trivial mask (the ratio decides its size)

    # per iteration: forget (labels c_f) then remain (labels never c_f)
    assert len(losses) == 2 * iters
    for k in range(iters):
        fast, slow = losses[2 * k], losses[2 * k + 1]
        assert bool((fast["c"] == 0).all()), "the first sub-step must be the forget step"
        assert not bool((slow["c"] == 0).any()), "the second sub-step must be on remaining classes"
        g_fast, g_slow = steps.grads[2 * k], steps.grads[2 * k + 1]
        assert torch.all(g_fast[~m] == 0), "fast step gradient not masked"
        assert float(g_fast[m].abs().sum()) > 0
        assert float(g_slow[~m].abs().sum()) > 0, "slow step must not be masked"
        before_fast = theta0 if k == 0 else steps.after[2 * k - 1]
        # ascent: the fed gradient points AGAINST the forget loss gradient (its step raises L_f)
        grad_f = _grad_at(assets, before_fast, fast["x"], fast["c"], fast["t"], fast["noise"])
        assert _cos(g_fast[m], grad_f[m]) < -0.3
        # descent: the fed gradient points WITH the remain loss gradient
        grad_r = _grad_at(assets, steps.after[2 * k], slow["x"], slow["c"], slow["t"], slow["noise"])
        assert _cos(g_slow, grad_r) > 0.3

    # first fast step: masked-out weights do not move, their moments are exactly zero
    d0 = steps.after[0] - theta0
    m0, v0 = steps.moments[0]
    assert torch.all(d0[~m] == 0) and torch.all(m0[~m] == 0) and torch.all(v0[~m] == 0)
    assert int((d0[m] != 0).sum()) > 0
    # a later fast step: zero gradient off the mask, yet they move (shared momentum from remain steps)
    d2 = steps.after[2] - steps.after[1]
    assert torch.all(steps.grads[2][~m] == 0)
    moved_out = int((d2[~m] != 0).sum())
    assert moved_out > 0.5 * int((~m).sum()), moved_out


# --- 5. SA's forgetting stage (§9.4) ---------------------------------------------------------------------
SA_SMALL = {"n_replay": 20, "fim_images": 2, "fim_timesteps": 10, "batch": 64}


def test_sa_forgetting_terms_uniform_surrogate_replay_and_shared_t(make_ctx, monkeypatch):
    """methods.md §9.4: each iteration has two L_simple terms with label dropout 0 and the SAME t:
    the forget term on images x_f ~ Uniform[−1, 1] (range [−1, 1], mean ≈ 0, variance ≈ 1/3)
    labelled c_f, and the replay term on generated images of the 9 remaining classes (labels never
    c_f; pixels stored as images, so on the uint8 grid k/127.5 − 1).
    Fails for: a Gaussian or [0, 1] surrogate, label dropout left on, separate t draws, replay that
    includes c_f or is not quantised like saved images."""
    torch.manual_seed(0)
    c_f = 3
    ctx = make_ctx(c_f)
    state = watch_context(monkeypatch, ctx)
    losses = spy_losses(monkeypatch, lambda: state["loop"])
    iters = 3
    cls, cfg = config("sa", SA_SMALL, iters)
    with ctx.counts.counting_optimizer_steps():
        cls(cfg).unlearn(ctx)
    assert ctx.counts.optimizer_steps == iters
    assert len(losses) == 2 * iters
    for k in range(iters):
        pair = losses[2 * k:2 * k + 2]
        forget = [c for c in pair if bool((c["c"] == c_f).all())]
        replay = [c for c in pair if not bool((c["c"] == c_f).any())]
        assert len(forget) == 1 and len(replay) == 1
        f, r = forget[0], replay[0]
        assert f["p_drop"] == 0 and r["p_drop"] == 0
        assert f["t"] is not None and r["t"] is not None and torch.equal(f["t"], r["t"])
        x = f["x"]
        assert float(x.min()) >= -1 and float(x.max()) <= 1
        assert abs(float(x.mean())) < 0.05
        assert float(x.var()) == pytest.approx(1 / 3, abs=0.03)
        assert not on_uint8_grid(x)
        assert set(r["c"].tolist()) <= set(range(10)) - {c_f} and len(set(r["c"].tolist())) > 1
        assert on_uint8_grid(r["x"])


def test_sa_ewc_term_holds_the_weights_at_the_original(make_ctx, assets):
    """methods.md §9.4: L includes λ·Σ F ⊙ (θ − θ*)² with θ* the frozen original weights. With a
    huge λ (1e6) the penalty dominates every step after the first (its gradient is 0 at θ = θ*), so
    the weights are pulled back toward θ*: their distance to θ* shrinks over the last iterations and
    ends far below the λ = 0 run's, whose distance keeps growing (same seeds, same streams).
    (Adam normalises the step size, so even λ = 1e6 cannot stop the weights moving by about lr per
    step; what it controls is the direction.)
    Fails for: the EWC term missing, its sign flipped, or an anchor that follows θ."""
    theta0 = flat_params(assets.base("raw"))
    iters = 16
    dist = {}
    for lam in (0.0, 1e6):
        torch.manual_seed(0)
        ctx = make_ctx(0)
        cls, cfg = config("sa", {**SA_SMALL, "lam": lam, "weights": "raw"}, iters)
        with ctx.counts.counting_optimizer_steps(), Steps() as steps:
            gen = cls(cfg).unlearn(ctx)
        assert len(steps.after) == iters
        assert torch.equal(steps.after[-1], flat_params(gen.net))
        dist[lam] = [float((a - theta0).norm()) for a in steps.after]
    free, held = dist[0.0], dist[1e6]
    assert free[-1] > free[iters // 2] > 0  # without EWC the weights keep drifting away
    assert held[-1] < held[iters // 2]  # with it they come back toward θ*
    assert held[-1] < 0.5 * free[-1], (held, free)


# --- 6. EBU's loop (§12.2) ---------------------------------------------------------------------------------
def _run_ebu(make_ctx, monkeypatch, overrides: dict, iters: int, c_f: int = 0):
    torch.manual_seed(0)
    ctx = make_ctx(c_f)
    state = watch_context(monkeypatch, ctx)
    losses = spy_losses(monkeypatch, lambda: state["loop"])
    seen = []
    orig = methods.ebu.combine_direction

    def spy(g_f, g_r, m_f, m_r, *args, **kwargs):
        seen.append({"g_f": g_f.clone(), "g_r": g_r.clone(), "m_f": m_f.clone(), "m_r": m_r.clone(),
                     "theta": flat_params(state["nets"][0])})
        return orig(g_f, g_r, m_f, m_r, *args, **kwargs)

    monkeypatch.setattr(methods.ebu, "combine_direction", spy)
    cls, cfg = config("ebu", overrides, iters)
    with ctx.counts.counting_optimizer_steps(), Steps() as steps:
        gen = cls(cfg).unlearn(ctx)
    # theta at the start of every iteration, plus the final raw weights
    thetas = [s["theta"] for s in seen] + [flat_params(state["nets"][0])]
    return ctx, cfg, gen, losses, seen, thetas, steps


def test_ebu_frozen_loop_updates_only_the_selected_weights(make_ctx, assets, monkeypatch):
    """methods.md §12.2: per iteration L_f = L_simple on x_f ~ N(0, I) (mean ≈ 0, var ≈ 1) labelled
    c_f and L_r = L_simple on replay images of the remaining classes, p_drop = 0, one shared t;
    M_f, M_r = global top-50% of |g_f|, |g_r| (§1.6); d = g_f on M_f∖M_r, g_r on M_r∖M_f, the
    min-norm point a·u + (1−a)·v on the overlap (a = clip(((v−u)·v)/max(‖u−v‖², 1e-12), 0, 1)),
    0 elsewhere; clip_norm(d, 1); Adam. "Weights in neither set get no update" (the default
    ``update_unselected`` must be ``frozen``): in EVERY iteration a weight outside M_f ∪ M_r keeps
    its value. In the first step (fresh Adam: −lr·d/(|d| + 1e-8) after clipping) exactly M_f ∪ M_r
    moves and forget-only weights move along −sign(g_f).
    Fails for: a uniform surrogate, label dropout on, separate t draws, a non-frozen default (Adam
    momentum moves unselected weights), forget-only coordinates following g_r or +g_f, per-layer
    instead of global top-k."""
    iters = 4
    ctx, cfg, gen, losses, seen, thetas, steps = _run_ebu(make_ctx, monkeypatch, {}, iters)
    assert cfg.update_unselected == "frozen"
    assert cfg.surrogate == "gaussian" and cfg.p_drop == 0.0
    assert ctx.counts.optimizer_steps == iters and len(seen) == iters

    # the two losses of each iteration
    assert len(losses) == 2 * iters
    for k in range(iters):
        pair = losses[2 * k:2 * k + 2]
        forget = [c for c in pair if bool((c["c"] == 0).all())]
        replay = [c for c in pair if not bool((c["c"] == 0).any())]
        assert len(forget) == 1 and len(replay) == 1
        f, r = forget[0], replay[0]
        assert f["p_drop"] == 0 and r["p_drop"] == 0
        assert f["t"] is not None and r["t"] is not None and torch.equal(f["t"], r["t"])
        assert abs(float(f["x"].mean())) < 0.05 and float(f["x"].var()) == pytest.approx(1.0, abs=0.06)
        assert float(f["x"].abs().max()) > 1.5  # Gaussian, not a [-1, 1] surrogate
        assert on_uint8_grid(r["x"]) and len(set(r["c"].tolist())) > 1

    n = thetas[0].numel()
    for k, s in enumerate(seen):
        m_f, m_r = s["m_f"], s["m_r"]
        # global top-50% of |g| (§1.6)
        for m, g in ((m_f, s["g_f"]), (m_r, s["g_r"])):
            assert int(m.sum()) == math.floor(0.5 * n)
            assert float(g.abs()[m].min()) >= float(g.abs()[~m].max())
        rest = ~(m_f | m_r)
        assert int(rest.sum()) > 0
        step = thetas[k + 1] - thetas[k]
        assert torch.all(step[rest] == 0), f"iteration {k}: a weight outside M_f ∪ M_r moved"

    # the first step from the spec: direction, clip, Adam's first update
    s = seen[0]
    g_f, g_r, m_f, m_r = s["g_f"], s["g_r"], s["m_f"], s["m_r"]
    sh, fo, ro = m_f & m_r, m_f & ~m_r, m_r & ~m_f
    u, v = g_f[sh].double(), g_r[sh].double()
    a = min(1.0, max(0.0, float((v - u) @ v) / max(float((u - v) @ (u - v)), 1e-12)))
    d = torch.zeros(n, dtype=torch.float64)
    d[fo], d[ro], d[sh] = g_f[fo].double(), g_r[ro].double(), a * u + (1 - a) * v
    d = d * min(1.0, cfg.clip / (float(d.norm()) + 1e-6))
    expected = (-cfg.lr * d / (d.abs() + 1e-8)).float()
    delta = thetas[1] - thetas[0]
    assert torch.allclose(delta, expected, rtol=1e-3, atol=2e-7)
    moved = delta != 0
    union = m_f | m_r
    assert not bool((moved & ~union).any())
    assert int((moved & union).sum()) >= 0.999 * int(union.sum())
    mv = fo & moved
    assert int(mv.sum()) > 0
    assert torch.all(torch.sign(delta[mv]) == -torch.sign(g_f[mv]))


def test_ebu_update_unselected_none_lets_adam_momentum_move_unselected_weights(make_ctx, monkeypatch):
    """methods.md §12.2 ("weights in neither set get no update"): with ``update_unselected=none`` the
    direction is 0 outside M_f ∪ M_r but Adam's momentum from earlier iterations still moves those
    weights once the masks change, which is exactly why ``frozen`` must be the default. In the first
    iteration (zero moments) nothing outside the masks moves even with ``none``.
    Fails for: ``none`` silently behaving like ``frozen`` (then this flag is meaningless) or moving
    unselected weights in the very first step."""
    iters = 4
    ctx, cfg, gen, losses, seen, thetas, steps = _run_ebu(make_ctx, monkeypatch, {"update_unselected": "none"}, iters)
    moved_rest = []
    for k, s in enumerate(seen):
        rest = ~(s["m_f"] | s["m_r"])
        moved_rest.append(int(((thetas[k + 1] - thetas[k])[rest] != 0).sum()))
    assert moved_rest[0] == 0
    assert max(moved_rest[1:]) > 0, moved_rest


# --- 7. SA/EBU EMA (§9.4, §12.2) -----------------------------------------------------------------------
@pytest.mark.parametrize("iters", [1, 3, 150, 20_000])
def test_budget_decay_keeps_the_reference_share_of_the_start(iters):
    """methods.md §9.4 uses μ = 0.9999 over 20,000 iterations; the harness scales it to the budget so
    the starting shadow keeps the same final weight: μ_eff^iters = 0.9999^20000 (and μ_eff = μ at the
    reference budget). Fails for: an unscaled μ, or scaling by iters/20000 instead of 20000/iters."""
    mu = budget_decay(0.9999, iters, 20_000)
    assert 0 < mu <= 1
    assert math.log(mu) * iters == pytest.approx(math.log(0.9999) * 20_000, rel=1e-9)
    if iters == 20_000:
        assert mu == pytest.approx(0.9999, rel=1e-12)


def _ema_expected(ema0: Tensor, thetas: list[Tensor], mu: float) -> Tensor:
    k = len(thetas)
    out = (mu ** k) * ema0.double()
    for j, th in enumerate(thetas, start=1):
        out += (1 - mu) * mu ** (k - j) * th.double()
    return out


def test_sa_ema_starts_from_the_pretrained_ema_and_follows_the_recursion(make_ctx, assets, monkeypatch):
    """methods.md §9.4: "EMA shadow ← pretrained EMA, μ = 0.9999", updated after every optimizer step
    (§1.5: shadow ← μ·shadow + (1 − μ)·θ). After k steps the shadow is
    μ^k·ema0 + Σ_j (1 − μ)·μ^(k−j)·θ_j with ema0 the pretrained EMA weights (not the raw ones) and
    θ_j the weights after step j; μ is the budget-scaled μ_eff recorded in ctx.info.
    Fails for: a shadow started from the raw weights, an unscaled or unrecorded μ, an update before
    the step or with μ and 1 − μ swapped."""
    torch.manual_seed(0)
    ctx = make_ctx(0)
    iters = 3
    cls, cfg = config("sa", {**SA_SMALL, "weights": "ema"}, iters)
    with ctx.counts.counting_optimizer_steps(), Steps() as steps:
        gen = cls(cfg).unlearn(ctx)
    mu = ctx.info["ema_decay_effective"]
    assert mu ** iters == pytest.approx(0.9999 ** 20_000, rel=1e-9)
    assert len(steps.after) == iters
    ema0, raw0 = flat_params(assets.base("ema")), flat_params(assets.base("raw"))
    got = flat_params(gen.net).double()
    expected = _ema_expected(ema0, steps.after, mu)
    tol = 1e-6
    assert torch.allclose(got, expected, atol=tol, rtol=0)
    # the start matters: a raw-started shadow would differ by mu^k * (ema0 - raw0)
    assert float(((mu ** iters) * (ema0 - raw0)).abs().max()) > 100 * tol


def test_ebu_ema_starts_from_the_pretrained_ema_and_follows_the_recursion(make_ctx, assets, monkeypatch):
    """methods.md §12.2 (EMA μ = 0.9999 "as SA", §9.4): same recursion as SA, with θ_j the weights
    at the end of iteration j (after the unselected weights are held). Fails for: a raw-started
    shadow, an EMA update before the unselected weights are restored."""
    iters = 3
    ctx, cfg, gen, losses, seen, thetas, steps = _run_ebu(make_ctx, monkeypatch, {"weights": "ema"}, iters)
    mu = ctx.info["ema_decay_effective"]
    assert mu == pytest.approx(budget_decay(0.9999, iters, 20_000))
    assert mu ** iters == pytest.approx(0.9999 ** 20_000, rel=1e-9)
    ema0, raw0 = flat_params(assets.base("ema")), flat_params(assets.base("raw"))
    assert torch.equal(thetas[0], raw0)  # the optimised weights start from the raw ones (§1.7)
    got = flat_params(gen.net).double()
    expected = _ema_expected(ema0, thetas[1:], mu)
    tol = 1e-6
    assert torch.allclose(got, expected, atol=tol, rtol=0)
    assert float(((mu ** iters) * (ema0 - raw0)).abs().max()) > 100 * tol
