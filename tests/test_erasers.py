"""The concept erasers' defining properties, computed from their papers' statements, not from their code:
UCE's edit is the minimiser of its least-squares objective and leaves an orthogonal preserve set exactly
unchanged; SLD's step is the guidance rule of the pipeline it comes from and changes no weight; CA leaves
the start token's key and value alone."""

from __future__ import annotations

import types
from collections import namedtuple

import pytest
import torch
from torch import nn

from bench.sd.safe import SafetyGuidance, safe_eps
from methods.ca import start_token_frozen
from methods.uce import closed_form_edit, erase_keys, preserve_keys

Req = namedtuple("Req", "set case_number prompt seed k guidance")


def _uce_objective(w, w0, keys, values, kept, lamb, se, sp):
    return (lamb * (w - w0).pow(2).sum() + se * (keys @ w.T - values).pow(2).sum()
            + sp * (kept @ w.T - kept @ w0.T).pow(2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uce_edit_satisfies_the_normal_equations_of_its_objective(seed):
    g = torch.Generator().manual_seed(seed)
    out, d = 5, 7
    w0 = torch.randn(out, d, generator=g, dtype=torch.float64)
    keys = torch.randn(3, d, generator=g, dtype=torch.float64)
    values = torch.randn(3, out, generator=g, dtype=torch.float64)
    kept = torch.randn(4, d, generator=g, dtype=torch.float64)
    lamb, se, sp = 0.5, 1.0, 0.3
    w = closed_form_edit(w0, keys, values, kept, lamb, se, sp).requires_grad_(True)
    _uce_objective(w, w0, keys, values, kept, lamb, se, sp).backward()
    assert w.grad.abs().max() < 1e-9  # the gradient of a strictly convex objective vanishes only at its minimum
    assert not torch.allclose(w.detach(), w0)


def test_uce_keeps_an_orthogonal_preserve_set_exactly_and_maps_erase_keys_to_their_targets():
    g = torch.Generator().manual_seed(3)
    d, out = 8, 6
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    keys = torch.randn(2, 3, generator=g, dtype=torch.float64) @ q[:, :3].T
    kept = torch.randn(4, 3, generator=g, dtype=torch.float64) @ q[:, 3:6].T
    w0 = torch.randn(out, d, generator=g, dtype=torch.float64)
    values = torch.randn(2, out, generator=g, dtype=torch.float64)
    w = closed_form_edit(w0, keys, values, kept, 0.5, 1.0, 1.0)
    torch.testing.assert_close(kept @ w.T, kept @ w0.T, rtol=0, atol=1e-10)
    w_sharp = closed_form_edit(w0, keys, values, kept, 1e-10, 1.0, 1.0)
    torch.testing.assert_close(keys @ w_sharp.T, values, rtol=0, atol=1e-6)


def _fake_ctx(lengths: dict[str, int], width: int = 10, dim: int = 3):
    emb = {p: torch.arange(width * dim, dtype=torch.float64).view(width, dim) + 1000 * i
           for i, p in enumerate(lengths)}
    return types.SimpleNamespace(text=lambda ps: torch.stack([emb[p] for p in ps]),
                                 token_lengths=lambda ps: [lengths[p] for p in ps]), emb


def test_uce_keys_are_the_last_word_token_onwards_aligned_with_the_guide():
    """Paper code: from each prompt's last word token (mask sum − 2) to the end, trimmed so both spans have
    the same length; the 2024 rewrite takes the last word token alone; preserve prompts give every position."""
    ctx, emb = _fake_ctx({"a cat": 5, "": 2, "a dog": 4})
    keys, guides = erase_keys(ctx, ["a cat"], "", "span")
    torch.testing.assert_close(keys, emb["a cat"][3:10])
    torch.testing.assert_close(guides, emb[""][0:7])
    keys, guides = erase_keys(ctx, ["a cat", "a dog"], "", "last")
    torch.testing.assert_close(keys, torch.stack([emb["a cat"][3], emb["a dog"][2]]))
    torch.testing.assert_close(guides, torch.stack([emb[""][0], emb[""][0]]))
    torch.testing.assert_close(preserve_keys(ctx, ["a dog"], "span"), emb["a dog"])


def test_sld_step_follows_the_pipeline_rule():
    """Elements: (a) ε_p − ε_S ≥ λ: μ = 0; (b) below λ with s_S|d| ≥ 1: μ = 1; (c) s_S|d| < 1: μ = s_S|d|."""
    g = SafetyGuidance("x", scale=10.0, warmup=1, threshold=0.01, momentum=0.5, beta=0.25)
    eu = torch.tensor([0.0, 0.0, 0.0])
    ep = torch.tensor([1.0, 0.0, 0.0])
    es = torch.tensor([0.5, 0.4, 0.05])
    nu0 = torch.tensor([0.2, 0.0, 0.0])
    gamma = torch.tensor([0.0 + 0.5 * 0.2, 1.0 * 0.4, 0.5 * 0.05])
    eps, nu = safe_eps(eu, ep, es, 7.5, g, step=0, nu=nu0)  # warm-up: plain guidance, momentum still moves
    torch.testing.assert_close(eps, eu + 7.5 * (ep - eu))
    torch.testing.assert_close(nu, 0.25 * nu0 + 0.75 * gamma)
    eps, _ = safe_eps(eu, ep, es, 7.5, g, step=1, nu=nu0)
    torch.testing.assert_close(eps, eu + 7.5 * (ep - eu - gamma))


def test_ca_gives_the_start_tokens_key_and_value_no_gradient():
    net = nn.Module()
    net.attn2 = nn.Module()
    net.attn2.to_k = nn.Linear(3, 2, bias=False)
    e = torch.randn(1, 4, 3)
    with start_token_frozen(net):
        out = net.attn2.to_k(e)
        out.sum().backward()
    torch.testing.assert_close(net.attn2.to_k.weight.grad, e[0, 1:].sum(0).expand(2, 3))
    torch.testing.assert_close(out, e @ net.attn2.to_k.weight.T)  # the forward is unchanged
    net.attn2.to_k.weight.grad = None
    net.attn2.to_k(e).sum().backward()  # the hook is gone after the block
    torch.testing.assert_close(net.attn2.to_k.weight.grad, e[0].sum(0).expand(2, 3))


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from bench.sd.latent import SDModel
    from bench.sd.loading import load_sd
    from bench.sd.micro import micro_sd_dir

    parts = load_sd(micro_sd_dir(tmp_path_factory.mktemp("micro")), "cpu", strict_v1=False)
    return SDModel(parts.unet.eval(), parts.vae, parts.text_encoder, parts.tokenizer, dict(parts.scheduler_config),
                   parts.scaling_factor, parts.vae_scale_factor, torch.device("cpu"))


def test_sld_changes_no_weight_and_steers_only_where_guidance_is_on(micro):
    from bench.sd.safe import PRESETS, SafeSampler
    from bench.sd.sampler import PromptSampler

    before = {k: v.clone() for k, v in micro.unet.state_dict().items()}
    plain = PromptSampler(micro, micro.unet, steps=4, guidance=7.5, px=16)
    safe = SafeSampler(plain, SafetyGuidance("a dog", **PRESETS["max"]))
    reqs = [Req("s", i, "a cat", 100 + i, 0, 7.5) for i in range(2)]
    assert not torch.equal(safe.sample(reqs, 2), plain.sample(reqs, 2))
    unguided = [Req("s", i, "a cat", 100 + i, 0, 1.0) for i in range(2)]
    assert torch.equal(safe.sample(unguided, 2), plain.sample(unguided, 2))
    assert safe.nfe == 12 and plain.nfe == 8
    after = micro.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_uce_edits_only_the_cross_attention_keys_and_values(micro):
    from methods.uce import cross_attention_projections

    names = {n for n, m in micro.unet.named_modules() if any(m is p for p in cross_attention_projections(micro.unet))}
    assert names and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in names)
    assert len(names) == 2 * sum(1 for n, _ in micro.unet.named_modules() if n.endswith("attn2"))


def test_a_resumed_cell_gets_the_same_safety_guidance_back_from_its_description(micro):
    from bench.sd.safe import PRESETS, SafeSampler, restore
    from bench.sd.sampler import PromptSampler

    plain = PromptSampler(micro, micro.unet, steps=4, guidance=7.5, px=16)
    safe = SafeSampler(plain, SafetyGuidance("a dog", **PRESETS["strong"]))
    back = restore(PromptSampler(micro, micro.unet, steps=4, guidance=7.5, px=16, batch_size=3), safe.describe())
    assert isinstance(back, SafeSampler) and back.safety == safe.safety and back.batch_size == 3
    assert restore(plain, plain.describe()) is plain
