"""Defining properties of the trained concept erasers, from their papers' statements: FMN's loss is the
attention the UNet really pays to the concept's tokens, and its step lowers it; EraseDiff's inner steps leave
θ where it was; ScissorHands re-initialises exactly the top-k connection sensitivities |θ ⊙ Σ|∇L||; MACE's
closed forms minimise their least-squares objectives and stage 1 leaves the concept's own tokens out."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from bench.sd.attention import concept_positions, cross_attentions, recorded_cross_attention
from methods._masks import top_fraction
from methods.erasediff import inner_forget_steps
from methods.fmn import attention_mass
from methods.mace import refinement_pairs, solve
from methods.scissorhands import connection_sensitivity, reinitialise_, snip_gradients


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from bench.sd.latent import SDModel
    from bench.sd.loading import load_sd
    from bench.sd.micro import micro_sd_dir

    parts = load_sd(micro_sd_dir(tmp_path_factory.mktemp("micro")), "cpu", strict_v1=False)
    return SDModel(parts.unet.eval(), parts.vae, parts.text_encoder, parts.tokenizer, dict(parts.scheduler_config),
                   parts.scaling_factor, parts.vae_scale_factor, torch.device("cpu"))


def _latents(micro, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *micro.latent_shape(16), generator=g)


def test_recorded_attention_is_the_attention_each_layer_applies(micro):
    """Each recorded map is a softmax over the 77 tokens, and the layer's output is exactly that map applied to
    its values (so the loss is taken on the attention the forward really used)."""
    unet, text = micro.unet, micro.text(["a handwritten digit zero", "a cat"])
    layers = cross_attentions(unet)
    outputs, values = [], []
    hooks = [m.register_forward_hook(lambda mod, a, k, out: outputs.append((mod, out)), with_kwargs=True)
             for m in layers]
    hooks += [m.to_v.register_forward_hook(lambda mod, a, out: values.append(out)) for m in layers]
    with torch.no_grad(), recorded_cross_attention(unet) as probs:
        unet(_latents(micro), torch.tensor([500, 20]), encoder_hidden_states=text)
    for h in hooks:
        h.remove()
    assert len(probs) == len(layers) > 0
    for p, v, (attn, out) in zip(probs, values, outputs):  # all three in the order the layers ran
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
        assert p.shape[-1] == 77 and p.shape[0] == 2 * attn.heads
        mixed = attn.batch_to_head_dim(torch.bmm(p, attn.head_to_batch_dim(v)))
        torch.testing.assert_close(attn.to_out[1](attn.to_out[0](mixed)), out, atol=1e-5, rtol=1e-4)


def test_concept_positions_find_the_words_tokens_and_the_end_tokens(micro):
    ids = micro.token_ids(["a handwritten digit zero"])
    word = micro.word_ids("zero")
    only = concept_positions(ids, word)[0]
    start = 1 + len("ahandwrittendigit")  # the char tokenizer: a token per letter (no spaces) after the start
    assert only.nonzero().flatten().tolist() == list(range(start, start + 4))
    assert ids[0, only].tolist() == word
    with_end = concept_positions(ids, word, micro.end_id)[0]
    assert with_end.sum() == 4 + (77 - (start + 4)) and not with_end[0]  # end + padding; never the start token


def test_fmn_loss_is_the_l2_norm_of_the_attention_on_the_concept_columns():
    p = torch.full((2, 5, 4), 0.25)  # uniform attention over 4 tokens: every selected entry is 0.25
    pos = torch.tensor([False, True, True, False])
    q = torch.zeros(3, 2, 4)
    q[..., 0] = 1.0  # a layer that attends only to token 0 adds nothing
    assert math.isclose(float(attention_mass([p, q], pos)), 0.25 * math.sqrt(2 * 5 * 2), rel_tol=1e-6)


def test_fmn_steps_take_attention_away_from_the_concept(micro):
    unet = micro.unet
    net = type(unet).from_config(unet.config)
    net.load_state_dict(unet.state_dict())
    prompt = "a handwritten digit zero"
    mask = concept_positions(micro.token_ids([prompt]), micro.word_ids("zero"))[0]
    text, z, t = micro.text([prompt]), _latents(micro, 1), torch.tensor([400])

    def mass():
        with recorded_cross_attention(net) as probs:
            net(z, t, encoder_hidden_states=text)
        return attention_mass(probs, mask)

    before = float(mass().detach())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(10):
        loss = mass()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(mass().detach()) < 0.8 * before


def _toy_ctx():
    return types.SimpleNamespace(timesteps=lambda n: torch.zeros(n, dtype=torch.long),
                                 q_sample=lambda z, t, e: z + 0.1 * e,
                                 eps=lambda net, z, t, c: net(z + c))


def test_erasediff_inner_steps_restore_theta_and_only_move_the_optimizer():
    torch.manual_seed(0)
    net = nn.Linear(3, 3)
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=0.1)
    xf, cf, ca = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    f_bar = inner_forget_steps(_toy_ctx(), net, params, opt, xf, cf, ca, k=3)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert f_bar > 0 and all(int(opt.state[p]["step"]) == 3 for p in params)
    assert inner_forget_steps(_toy_ctx(), net, params, opt, xf, cf, ca, k=0) == 0.0


def test_scissorhands_reinitialises_exactly_the_top_k_connection_sensitivities():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.GroupNorm(2, 8), nn.Linear(8, 4))
    with torch.no_grad():  # a trained network: no parameter at its initial value
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    xs = [torch.randn(5, 6) for _ in range(3)]
    ctx = types.SimpleNamespace(loss=lambda m, x, c: m(x).pow(2).mean())
    grads = snip_gradients(ctx, net, iter([(x, None) for x in xs]), 3, 0.0)
    expect = {n: torch.zeros_like(p) for n, p in net.named_parameters()}  # Σ_b |∇L_b|, batch by batch
    for x in xs:
        net.zero_grad()
        net(x).pow(2).mean().backward()
        for n, p in net.named_parameters():
            expect[n] += p.grad.abs()
    for n in expect:
        torch.testing.assert_close(grads[n], expect[n])
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    k = 0.2
    scores = torch.cat([(before[n] * grads[n]).abs().flatten() for n in before])
    names = [n for n in before for _ in range(before[n].numel())]
    top = set(torch.argsort(scores, descending=True)[: int(k * scores.numel())].tolist())
    mask = top_fraction(connection_sensitivity(net, grads), k)
    changed = reinitialise_(net, mask, torch.Generator().manual_seed(0))
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    old = torch.cat([b.flatten() for b in before.values()])
    moved = set((after != old).nonzero().flatten().tolist())
    assert changed == len(top) and moved == top
    for i in top:
        if names[i].endswith("bias"):
            assert after[i] == 0
        elif names[i] == "1.weight":  # the GroupNorm's scale goes back to its initial 1
            assert after[i] == 1
        else:
            assert abs(float(after[i])) <= 0.04


@pytest.mark.parametrize("seed", [0, 1])
def test_mace_solve_minimises_its_objective(seed):
    g = torch.Generator().manual_seed(seed)
    out, d = 4, 6
    w_ref, w_keep = (torch.randn(out, d, generator=g, dtype=torch.float64) for _ in range(2))
    keys, values = torch.randn(3, d, generator=g, dtype=torch.float64), torch.randn(3, out, generator=g,
                                                                                  dtype=torch.float64)
    kept = torch.randn(5, d, generator=g, dtype=torch.float64)
    lamb, s = 0.3, 0.7
    w = solve(w_ref, keys, values, kept, w_keep, lamb, s).requires_grad_(True)
    objective = (lamb * (w - w_ref).pow(2).sum() + (keys @ w.T - values).pow(2).sum()
                 + s * (kept @ w.T - kept @ w_keep.T).pow(2).sum())
    objective.backward()
    assert w.grad.abs().max() < 1e-9


def test_mace_refinement_leaves_the_concepts_tokens_out(micro):
    prompt = "a handwritten digit zero"
    ctx = types.SimpleNamespace(text=micro.text, concept_mask=lambda ps, c: concept_positions(
        micro.token_ids(ps), micro.word_ids(c)))
    keys, targets = refinement_pairs(ctx, {"zero": [prompt]}, "")
    emb, mapped = micro.text([prompt])[0].double(), micro.text(["a handwritten digit"])[0].double()
    start = 1 + len("ahandwrittendigit")
    assert keys.shape[0] == 77 - 4  # every position but the four letters of "zero"
    torch.testing.assert_close(keys[:start], emb[:start])
    torch.testing.assert_close(keys[start:], emb[start + 4:])
    torch.testing.assert_close(targets[:start], mapped[:start])
    torch.testing.assert_close(targets[start:], mapped[start:start + 77 - start - 4])


def test_a_prefix_equal_to_a_tokens_embedding_encodes_like_that_token_inserted(micro):
    """AdvUnlearn's attack vectors sit in the token-embedding space after the start token: a vector equal to the
    embedding of token "x" must give exactly the encoding of the prompt with "x" inserted there."""
    from bench.sd.textenc import encode_with_prefix

    enc = micro.text_encoder
    ids = micro.token_ids(["a handwritten digit zero"])
    x = micro.word_ids("x")
    inserted = torch.cat([ids[:, :1], torch.tensor([x]), ids[:, 1:-1]], 1)
    delta = enc.get_input_embeddings().weight[x].detach()
    with torch.no_grad():
        got = encode_with_prefix(enc, ids, delta, micro.end_id)
        want = enc(inserted)[0]
    torch.testing.assert_close(got, want)
    delta = delta.clone().requires_grad_(True)
    encode_with_prefix(enc, ids, delta, micro.end_id).sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_a_sampler_with_its_own_text_encoder_encodes_with_it(micro):
    import copy

    from bench.sd.sampler import PromptSampler

    Req = types.SimpleNamespace
    reqs = [Req(prompt="a handwritten digit zero", seed=5, k=0, guidance=7.5)]
    base = PromptSampler(micro, micro.unet, steps=3, guidance=7.5, px=16)
    twin = copy.deepcopy(micro.text_encoder)
    same = PromptSampler(micro, micro.unet, steps=3, guidance=7.5, px=16, text_encoder=twin)
    assert torch.equal(base.sample(reqs), same.sample(reqs))
    assert same.describe()["text_encoder"] == "unlearned" and base.describe()["text_encoder"] == "base"
    with torch.no_grad():
        twin.get_input_embeddings().weight.mul_(-1.0)
    assert not torch.equal(base.sample(reqs), same.sample(reqs))
