"""RECE's defining properties, computed from the paper's and the reference code's statements, not from the plugin's
formulas: the adversarial embedding is the minimiser of Σ_l‖W'_l c' − W_l c‖² + λ_reg‖c'‖² (checked against a
least-squares solve of the stacked system and the objective's gradient), it undoes an edit that every projection
shares; a round is the minimiser of UCE's objective with c' as erase keys and the current weights' outputs of the
guide as targets, so it maps c' closer to the guide's values; iteration 0 is UCE's edit; only the cross-attention
keys and values change."""

from __future__ import annotations

import copy
import types
from dataclasses import replace

import pytest
import torch
from torch import nn

from methods.rece import RECE, adversarial_embedding, round_pairs
from methods.uce import UCE

D, L = 6, 5  # text width and sequence length of the toy text encoder


def _stacked_lstsq(edited, original, c, reg):
    """argmin_x Σ_l ‖W'_l x − W_l c‖² + reg ‖x‖² as one least-squares problem:
    [W'_1; …; W'_L; √reg I] x = [W_1 c; …; 0]."""
    d = c.shape[1]
    a = torch.cat([*edited, reg ** 0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([*(w @ c.T for w in original), torch.zeros(d, c.shape[0], dtype=torch.float64)])
    return torch.linalg.lstsq(a, b).solution.T


def _random_weights(g, outs, d):
    return [torch.randn(o, d, generator=g, dtype=torch.float64) for o in outs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_adversarial_embedding_minimises_the_regularised_gap_to_the_original_outputs(seed):
    g = torch.Generator().manual_seed(seed)
    d, reg = 7, 0.1
    original = _random_weights(g, [3, 5, 4, 6], d)
    edited = [w + 0.5 * torch.randn(w.shape, generator=g, dtype=torch.float64) for w in original]
    c = torch.randn(4, d, generator=g, dtype=torch.float64)
    adv = adversarial_embedding(edited, original, c, reg)
    torch.testing.assert_close(adv, _stacked_lstsq(edited, original, c, reg), rtol=0, atol=1e-9)
    x = adv.clone().requires_grad_(True)
    objective = sum((x @ we.T - c @ wo.T).pow(2).sum() for we, wo in zip(edited, original)) + reg * x.pow(2).sum()
    objective.backward()
    assert x.grad.abs().max() < 1e-9  # strictly convex: the gradient vanishes only at the minimum
    assert adv.dtype == torch.float64


def test_the_adversarial_embedding_undoes_an_edit_all_projections_share():
    """UCE's ``replace`` edit is W'_l = W_l T with one T for every projection, so c' = T⁻¹ c restores every
    original output exactly; as λ_reg → 0 RECE finds it, and a larger λ_reg shrinks c'."""
    g = torch.Generator().manual_seed(4)
    d = 6
    original = _random_weights(g, [4, 5, 3], d)
    t = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    edited = [w @ t for w in original]
    c = torch.randn(3, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(adversarial_embedding(edited, original, c, 1e-12),
                               torch.linalg.solve(t, c.T).T, rtol=0, atol=1e-8)
    norms = [adversarial_embedding(edited, original, c, r).norm() for r in (1e-3, 1.0, 100.0)]
    assert norms[0] > norms[1] > norms[2]


class _Block(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.attn1, self.attn2 = nn.Module(), nn.Module()
        for attn in (self.attn1, self.attn2):
            attn.to_k = nn.Linear(D, out, bias=False)
            attn.to_v = nn.Linear(D, out, bias=False)


def _toy():
    torch.manual_seed(0)
    net = nn.Module()
    net.down, net.up = _Block(4), _Block(7)
    net.conv = nn.Linear(3, 3)
    g = torch.Generator().manual_seed(1)
    prompts = {"cat": 4, "": 2, "dog": 4, "bird": 5, "art": 3}
    emb = {p: torch.randn(L, D, generator=g) for p in prompts}
    return net, emb, prompts


def _ctx(net, emb, lengths, records):
    return types.SimpleNamespace(
        base_model=lambda: copy.deepcopy(net), steps=lambda n: range(n), sampler=lambda m: m,
        text=lambda ps: torch.stack([emb[p] for p in ([ps] if isinstance(ps, str) else ps)]),
        token_lengths=lambda ps: [lengths[p] for p in ps],
        prompts=types.SimpleNamespace(erase="cat", remain=("dog", "bird")),
        record=lambda **kw: records.update(kw), log=lambda **kw: None)


def _kv(net):
    return [m.weight.detach().double().clone() for n, m in net.named_modules() if n.endswith(("attn2.to_k",
                                                                                                "attn2.to_v"))]


def _run(cls, **config):
    net, emb, lengths = _toy()
    records: dict = {}
    out = cls(replace(cls.Config(), **config)).unlearn(_ctx(net, emb, lengths, records))
    return net, out, emb, records


def test_iteration_zero_is_the_uce_edit_and_zero_iterations_leave_the_model_alone():
    _, uce, _, _ = _run(UCE, preserve_scale=0.5)
    net, rece, _, records = _run(RECE, iters=1, uce_preserve_scale=0.5)
    for a, b in zip(_kv(uce), _kv(rece)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(_kv(rece)[0], _kv(net)[0])
    assert records["rece_epochs"] == 0
    _, untouched, _, _ = _run(RECE, iters=0)
    assert all(torch.equal(a, b) for a, b in zip(_kv(untouched), _kv(net)))


@pytest.mark.parametrize("guide", ["", "art"])
def test_a_round_is_the_uce_edit_of_the_adversarial_embedding_towards_the_current_guide_values(guide):
    """λ1‖W − W'‖² + η_e Σ_t‖W c'_t − W' e_t‖² + λ2 Σ_p Σ_t‖W p_t − W' p_t‖² over all positions t, W' the weights
    after the UCE edit, c' from the original and the UCE weights; its gradient vanishes at the round's result,
    which maps c' to the guide's values better than W' did."""
    lamb, se, sp, reg = 0.1, 1.0, 0.1, 0.1
    net, uce, emb, _ = _run(RECE, iters=1, guide=guide)
    _, rece, _, records = _run(RECE, iters=2, guide=guide, lamb=lamb, erase_scale=se, preserve_scale=sp,
                               reg_scale=reg)
    original, current, new = _kv(net), _kv(uce), _kv(rece)
    c, e = emb["cat"].double(), emb[guide].double()
    kept = torch.cat([emb[p].double() for p in ("", "dog", "bird")])  # ∅ + remain
    adv = _stacked_lstsq(current, original, c, reg)
    for w0, w1 in zip(current, new):
        w = w1.clone().requires_grad_(True)
        objective = (lamb * (w - w0).pow(2).sum() + se * (adv @ w.T - e @ w0.T).pow(2).sum()
                     + sp * (kept @ w.T - kept @ w0.T).pow(2).sum())
        objective.backward()
        assert w.grad.abs().max() < 1e-4, w.grad.abs().max()  # weights are stored in float32
        assert (adv @ w1.T - e @ w0.T).norm() < (adv @ w0.T - e @ w0.T).norm()
    assert records["rece_epochs"] == 1
    assert float(records["rece_adv_norm_1"]) == pytest.approx(float(adv.norm(dim=-1).mean()), rel=1e-5)
    # the round removed what c' recovered
    assert float(records["rece_gap_after_1"]) > float(records["rece_gap_before_1"])


def test_rounds_edit_only_the_cross_attention_keys_and_values():
    net, rece, _, records = _run(RECE, iters=3)
    before, after = dict(net.named_parameters()), dict(rece.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"{b}.attn2.to_{kv}.weight" for b in ("down", "up") for kv in "kv"}
    assert records["rece_epochs"] == 2 and "rece_adv_norm_2" in records


def test_span_pairs_take_the_last_word_token_onwards_aligned_with_the_guide():
    """``adv_tokens=span``: UCE's alignment (concept from token count − 2, guide from its own, trimmed to a common
    length); ``all`` (the reference): every position with the guide's same position."""
    adv = torch.arange(2 * L * 1, dtype=torch.float64).view(2, L, 1)
    guide = 100 + torch.arange(L, dtype=torch.float64).view(L, 1)
    keys, guides = round_pairs(adv, guide, [4, 5], 2, "span")
    torch.testing.assert_close(keys, torch.cat([adv[0, 2:5], adv[1, 3:5]]))
    torch.testing.assert_close(guides, torch.cat([guide[0:3], guide[0:2]]))
    keys, guides = round_pairs(adv, guide, [4, 5], 2, "all")
    torch.testing.assert_close(keys, adv.flatten(0, 1))
    torch.testing.assert_close(guides, torch.cat([guide, guide]))
