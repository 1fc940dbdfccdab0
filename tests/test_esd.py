"""ESD checked against its definitions (docs/methods.md, "esd" and "ESD's timing"): where the partial sample
is scored under each timing rule, how many DDIM steps produce it, and the negative-guidance target."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

import methods.esd
from bench.method import resolve_config
from bench.tasks.digits import DIGITS
from methods.esd import ESD, score_timestep

T = 1000


def sd_timesteps(steps: int) -> list[int]:
    """Stable Diffusion's DDIM timesteps (scaled-linear, steps_offset 1), first to last."""
    s = DDIMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    s.set_timesteps(steps)
    return s.timesteps.tolist()


def level_after(steps: int, k: int) -> int:
    """The reference runs S − max(k−1, 0) steps; the latent then sits at the level it stepped to (0 after all)."""
    j = steps - max(k - 1, 0)
    return (sd_timesteps(steps) + [0])[j]


def gaps(timing: str, steps: int, k: int, draws: int = 200) -> list[int]:
    level = level_after(steps, k)
    return [score_timestep(timing, k, level, steps, T) - level for _ in range(draws)]


def test_reference_scores_39_to_58_steps_above_the_latent_at_50_steps():
    assert sd_timesteps(50)[:2] == [981, 961]
    torch.manual_seed(0)
    for k in range(2, 50):
        g = gaps("reference", 50, k)
        assert min(g) >= 39 and max(g) <= 58, (k, min(g), max(g))
    assert min(min(gaps("reference", 50, k)) for k in range(2, 50)) == 39  # both ends are reached
    assert max(max(gaps("reference", 50, k)) for k in range(2, 50)) == 58


def test_the_reference_gap_grows_to_a_fifth_of_the_schedule_at_10_steps():
    torch.manual_seed(1)
    all_gaps = [x for k in range(2, 10) for x in gaps("reference", 10, k)]
    assert min(all_gaps) >= 199 and max(all_gaps) <= 298 and max(all_gaps) - min(all_gaps) > 80


def test_scaled_is_the_reference_at_50_steps_draw_for_draw():
    for k in range(50):
        level = level_after(50, k)
        torch.manual_seed(k)
        ref = [score_timestep("reference", k, level, 50, T) for _ in range(20)]
        torch.manual_seed(k)
        assert [score_timestep("scaled", k, level, 50, T) for _ in range(20)] == ref


def test_scaled_keeps_the_50_step_gap_at_10_steps():
    torch.manual_seed(2)
    for k in range(2, 10):
        g = gaps("scaled", 10, k)
        assert min(g) >= 39 and max(g) <= 60, (k, min(g), max(g))


def test_aligned_scores_at_the_latent_level():
    assert all(score_timestep("aligned", k, lvl, 10, T) == lvl for k, lvl in enumerate(sd_timesteps(10)))


@pytest.mark.parametrize("timing", ["reference", "scaled", "aligned"])
def test_each_iteration_samples_the_steps_its_bin_asks_for(timing, make_ctx, monkeypatch):
    """On a class task: the partial DDIM runs S − max(k−1, 0) steps (``aligned``: k steps), and the sample is
    scored from the level those steps reach."""
    ctx = make_ctx()
    steps = 10
    seen: list[dict] = []
    real_partial, real_score = ctx.family.ddim_partial, methods.esd.score_timestep

    def partial(net, c, w, S, stop_after, z=None):
        seen.append({"ran": stop_after + 1})
        return real_partial(net, c, w, S, stop_after, z)

    def score(timing_, k, level, S, T_, ref_steps=50):
        if not seen or "k" in seen[-1]:
            seen.append({"ran": 0})  # no partial sampling this iteration (aligned, k = 0)
        seen[-1].update(k=k, level=level)
        return real_score(timing_, k, level, S, T_, ref_steps)

    monkeypatch.setattr(ctx.family, "ddim_partial", partial)
    monkeypatch.setattr(methods.esd, "score_timestep", score)
    cfg = resolve_config(ESD, DIGITS, DIGITS.profile("smoke"), {"esd_timing": timing, "ddim_steps": steps}, iters=12)
    with ctx.counts.counting_optimizer_steps():
        ESD(cfg).unlearn(ctx)
    levels = ctx.family.ddim_timesteps(steps).tolist() + [0]
    assert len(seen) == 12 and levels[:2] == [900, 800]
    for it in seen:
        want = it["k"] if timing == "aligned" else steps - max(it["k"] - 1, 0)
        assert it["ran"] == want and it["level"] == levels[want], it


def test_the_first_loss_is_the_guidance_gap_times_one_plus_eta_squared(make_ctx, assets, monkeypatch):
    """Before any update θ equals the frozen θ0, so ε(c) − ε* = (1 + η)(ε(c) − ε(∅)) and the first loss is
    (1 + η)² · mean((ε(x, t, c) − ε(x, t, ∅))²) on the sample and timestep of that iteration."""
    ctx = make_ctx()
    captured = {}
    real_score = methods.esd.score_timestep
    real_partial = ctx.family.ddim_partial

    def partial(net, c, w, S, stop_after, z=None):
        captured["x"] = real_partial(net, c, w, S, stop_after, z)
        return captured["x"]

    def score(*a, **k):
        captured.setdefault("t", real_score(*a, **k))
        return captured["t"]

    monkeypatch.setattr(ctx.family, "ddim_partial", partial)
    monkeypatch.setattr(methods.esd, "score_timestep", score)
    eta = 0.7
    cfg = resolve_config(ESD, DIGITS, DIGITS.profile("smoke"), {"eta": eta, "esd_timing": "reference"}, iters=1)
    with ctx.counts.counting_optimizer_steps():
        ESD(cfg).unlearn(ctx)
    first = ctx.logs[0]["loss"]
    net = assets.base("raw").eval()
    x, t = captured["x"], torch.full((1,), captured["t"], dtype=torch.long)
    with torch.no_grad():
        e_c = net(x, t.float(), torch.full((1,), ctx.forget_class))
        e_0 = net(x, t.float(), torch.full((1,), ctx.num_classes))  # the null class
    assert first == pytest.approx((1 + eta) ** 2 * float((e_c - e_0).pow(2).mean()), rel=1e-4)
