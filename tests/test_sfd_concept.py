"""SFD and PECKER on text-to-image tasks, from the SD recipe as docs/methods.md states it (not from the code):
SD's scaled-linear ᾱ, the SiD-LSG one-step generator on latents (unguided, at t_init = 625), the score networks
guided in the "s" form with the empty prompt as ∅, the fake-score loss summed over latent elements and averaged
over the batch, the forget branch (teacher at the override prompt, fake score at the forget prompt), caption
dropout 0.1 on the fake score only when it is guided, retain prompts drawn from the remaining captions, and the
loading of a user's one-step generator."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.sd import latent
from bench.sd.micro import UNET_CONFIG
from bench.tasks.concepts import ConceptPrompts
from methods import _distill as D
from methods._sid_text import LatentSchedule, PromptConditions, load_generator
from methods.pecker import PECKER, saliency_mask
from methods.sfd import SFD

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (4, 8, 8)
DIM = UNET_CONFIG["cross_attention_dim"]
PROMPTS = ConceptPrompts(erase="zero", forget="a digit zero", cover="a digit one",
                         remain=("a digit one", "a digit two", "a digit three"), sa_forget=("zero",),
                         sa_surrogate="a digit one", override="a digit one")


def _unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


class TextCtx:
    """The parts of a concept-task UnlearnContext SFD/PECKER use: SD's schedule, a random tiny UNet, and a fixed
    random embedding per prompt."""

    kind, device, image_shape, seed, one_step_generator = "concept", torch.device("cpu"), SHAPE, 0, None

    def __init__(self) -> None:
        self.ac = latent.scaled_linear_alphas().float()
        self.prompts = PROMPTS
        self._base = _unet(7)
        self._emb: dict[str, torch.Tensor] = {}
        self.text_calls: list[list[str]] = []

    def _embed(self, p: str) -> torch.Tensor:
        if p not in self._emb:
            g = torch.Generator().manual_seed(len(self._emb) + 11)
            self._emb[p] = torch.randn(77, DIM, generator=g)
        return self._emb[p]

    def text(self, prompts, n=None):
        prompts = [prompts] * (n or 1) if isinstance(prompts, str) else list(prompts)
        self.text_calls.append(prompts)
        return torch.stack([self._embed(p) for p in prompts])

    def cond(self, role, n):
        return self.text({"forget": PROMPTS.forget, "cover": PROMPTS.cover, "null": ""}[role], n)

    def q_sample(self, z0, t, noise):
        return latent.q_sample(self.ac, z0, t, noise)

    def eps(self, net, z, t, e, p_drop=0.0):
        assert p_drop == 0.0
        return latent.eps_pred(net, z, t, e)

    def guided_eps(self, net, z, t, e, w):
        return latent.guided_eps(net, z, t, e, self.text("", e.shape[0]), 1.0 + w)

    def base_model(self, weights="raw", name="model", trainable=True):
        import copy

        net = copy.deepcopy(self._base).train(trainable).requires_grad_(trainable)
        return net

    def clone(self, net, name, trainable=True):
        import copy

        return copy.deepcopy(net).train(trainable).requires_grad_(trainable)

    def optimizer(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, kind="adam"):
        return torch.optim.Adam(list(params), lr=lr, betas=betas, eps=eps)


class Recorder(nn.Module):
    """Records the prompt embedding of every call of a diffusers UNet."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z, t, encoder_hidden_states):
        self.calls.append((t.detach().clone(), encoder_hidden_states.detach().clone()))
        return self.net(z, t, encoder_hidden_states=encoder_hidden_states)


def concept_cfg(cls=SFD, **kw):
    merged = {**D.CONCEPT_PRESETS["concept"], "iters": 2, "batch": 3, **kw}
    return dataclasses.replace(cls.Config(), **merged)


@pytest.fixture
def ctx() -> TextCtx:
    return TextCtx()


def test_schedule_is_sds_scaled_linear_one(ctx):
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    ab, expected = 1.0, []
    for b in betas:
        ab *= 1.0 - b
        expected.append(ab)
    got = LatentSchedule(ctx, 4.5).alphas_cumprod
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=2e-6, atol=1e-7)


def test_generator_is_the_unguided_unet_at_t_init_625(ctx):
    """x̂0 = (σ n − σ ε_G(σ n, 625, e)) / √ᾱ_625 with σ = √(1 − ᾱ_625), whatever the score networks' guidance."""
    st = D.build_state(ctx, concept_cfg(guidance=4.5))
    ab = float(ctx.ac[625])
    sigma = math.sqrt(1 - ab)
    n = torch.randn(2, *SHAPE)
    e = ctx.text(["a digit two", "a digit three"])
    with torch.no_grad():
        got = st.G(st.gen, n, e)
        eps = st.gen(sigma * n, torch.full((2,), 625), encoder_hidden_states=e).sample
    torch.testing.assert_close(got, (sigma * n - sigma * eps) / math.sqrt(ab), rtol=1e-5, atol=1e-5)


def test_score_networks_use_s_form_guidance_with_the_empty_prompt(ctx):
    net = _unet(3)
    z, t = torch.randn(2, *SHAPE), torch.tensor([100, 700])
    e = ctx.text(["a digit one", "a digit zero"])
    with torch.no_grad():
        got = LatentSchedule(ctx, 4.5).eps(net, z, t, e)
        e_c = net(z, t, encoder_hidden_states=e).sample
        e_u = net(z, t, encoder_hidden_states=ctx.text("", 2)).sample
        plain = LatentSchedule(ctx, 1.0).eps(net, z, t, e)
    torch.testing.assert_close(got, e_u + 4.5 * (e_c - e_u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, e_c)


def test_fake_score_loss_sums_over_latent_elements_and_averages_over_the_batch(ctx):
    net, sched = _unet(4), LatentSchedule(ctx, 4.5)
    x0, noise = torch.randn(3, *SHAPE), torch.randn(3, *SHAPE)
    t, e = torch.tensor([20, 500, 979]), ctx.text(["a digit one"] * 3)
    with torch.no_grad():
        got = D.sg_loss(sched, net, x0, e, 20, 980, t=t, noise=noise)
        x_t = torch.stack([math.sqrt(float(ctx.ac[k])) * x0[i] + math.sqrt(1 - float(ctx.ac[k])) * noise[i]
                           for i, k in enumerate(t.tolist())])
        e_c = net(x_t, t, encoder_hidden_states=e).sample
        e_u = net(x_t, t, encoder_hidden_states=ctx.text("", 3)).sample
        pred = e_u + 4.5 * (e_c - e_u)
    expected = sum(float(((noise[i] - pred[i]) ** 2).sum()) for i in range(3)) / 3
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_forget_branch_teacher_at_override_prompt_fake_at_forget_prompt(ctx):
    cfg = concept_cfg(guidance=1.0)
    st = D.build_state(ctx, cfg)
    st.teacher, st.fake = Recorder(st.teacher), Recorder(st.fake)
    c_r = next(st.cond.remain())
    D.begin_generator_step(st)
    l_d, l_f, x_f = D.generator_terms(ctx, st, cfg, c_r, 0)
    assert l_f is not None and x_f.requires_grad and x_f.shape == (3, *SHAPE)
    (t_r, teacher_r), (_, teacher_f) = st.teacher.calls
    (_, fake_r), (_, fake_f) = st.fake.calls
    assert torch.equal(teacher_r, c_r) and torch.equal(fake_r, c_r)
    assert torch.equal(teacher_f, ctx.text(PROMPTS.override, 3)) and torch.equal(fake_f, ctx.text(PROMPTS.forget, 3))
    assert t_r.min() >= 20 and t_r.max() < 980


def test_caption_dropout_only_on_a_guided_fake_score(ctx):
    e = ctx.text("a digit two", 4000)
    guided = PromptConditions(ctx, 8, 4.5).drop(e)
    dropped = (guided == ctx.text("", 1)).flatten(1).all(1).float().mean()
    assert abs(float(dropped) - 0.1) < 0.02
    assert torch.equal(PromptConditions(ctx, 8, 1.0).drop(e), e)


def test_retain_prompts_are_the_remaining_captions_in_shuffled_cycles(ctx):
    cond = PromptConditions(ctx, 2, 4.5)
    stream = cond.remain()
    ctx.text_calls.clear()
    for _ in range(6):
        next(stream)
    seen = [p for call in ctx.text_calls for p in call]
    assert len(seen) == 12 and set(seen) == set(PROMPTS.remain)
    assert PROMPTS.forget not in seen


def test_one_iteration_moves_the_generator_and_counts_two_steps(ctx):
    for cls in (SFD, PECKER):
        cfg = concept_cfg(cls, lr_psi=1e-3, lr_theta=1e-3)
        st = D.build_state(ctx, cfg)
        before = [p.detach().clone() for p in st.gen.parameters()]
        c_r = next(st.cond.remain())
        D.fake_score_step(ctx, st, cfg, c_r, 0)
        D.begin_generator_step(st)
        l_d, l_f, _ = D.generator_terms(ctx, st, cfg, c_r, 0)
        st.opt_gen.zero_grad()
        (l_d + l_f).backward()
        st.opt_gen.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, st.gen.parameters()))


def test_pecker_saliency_on_latents_keeps_the_top_half(ctx):
    cfg = concept_cfg(PECKER)
    st = D.build_state(ctx, cfg)
    x_f = torch.randn(3, *SHAPE)
    mask = saliency_mask(ctx, st, cfg, x_f, None, 3)
    n = sum(p.numel() for p in st.gen.parameters())
    assert int(sum(m.sum() for m in mask.values())) == math.floor(0.5 * n)


def test_class_tasks_refuse_guidance():
    from types import SimpleNamespace

    fake = SimpleNamespace(kind="class")
    with pytest.raises(BenchError, match="guidance applies to concept tasks"):
        D.schedule_and_conditions(fake, SimpleNamespace(guidance=4.5))


def test_user_generator_is_loaded_or_refused_in_one_line(tmp_path, ctx):
    user = _unet(9)
    user.save_pretrained(tmp_path / "gen")
    gen = _unet(1)
    load_generator(gen, tmp_path / "gen")
    assert all(torch.equal(a, b) for a, b in zip(gen.state_dict().values(), user.state_dict().values()))
    with pytest.raises(BenchError, match="expected a diffusers UNet folder"):
        load_generator(gen, tmp_path)
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel(**{**UNET_CONFIG, "block_out_channels": (8, 24)}).save_pretrained(tmp_path / "other")
    with pytest.raises(BenchError, match="does not match the task's UNet"):
        load_generator(gen, tmp_path / "other")


def test_evaluation_sampler_renders_what_the_generator_makes(ctx):
    """The harness's one-step sampler (which also re-renders a resumed cell from its saved UNet) computes the very
    map the method trained, and records NFE 1 and t_init, so the evaluator restores it from the description."""
    from types import SimpleNamespace

    from bench.sd.safe import restore
    from bench.sd.sampler import OneStepPromptSampler, PromptSampler

    st = D.build_state(ctx, concept_cfg(guidance=4.5))
    model = SimpleNamespace(alphas_cumprod=ctx.ac, latent_shape=lambda px: SHAPE, device=torch.device("cpu"))
    base = PromptSampler(model, st.gen, 10, 7.5, 16, "ema", 4)
    sampler = restore(base, OneStepPromptSampler.like(base, 625).describe())
    assert isinstance(sampler, OneStepPromptSampler) and sampler.nfe == 1 and sampler.t_init == 625
    n, e = torch.randn(2, *SHAPE), ctx.text(["a digit two", "a digit one"])
    with torch.no_grad():
        torch.testing.assert_close(sampler.x0(n, e), st.G(st.gen, n, e), rtol=1e-5, atol=1e-5)
    assert restore(base, base.describe()) is base
