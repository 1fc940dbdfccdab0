"""SPM's defining properties (Lyu et al., CVPR 2024), computed from its description, not from its code: a
fresh adapter (U = 0) changes nothing; each adapted layer's weight changes by a matrix of rank exactly 1;
only the transformer blocks' Linear and Conv2d layers are adapted and only the adapters train; Facilitated
Transport gates a prompt equal to the concept at 1 and an orthogonal one at 0; detaching gives back the
very same modules. Plus the Latent-Anchoring batch of the released code and its learning-rate schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.sd import adapters
from bench.sd.adapters import adapted_layers, attach, attach_from_state, detach, fixed_gate
from bench.sd.micro import UNET_CONFIG
from methods.spm import anchor_batch, lr_factor, sample_anchors

#: the 12 layers the reference adapts in each SD v1.x transformer block (proj_in/out are 1x1 Conv2d)
BLOCK_LAYERS = {"proj_in", "proj_out", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2",
                *(f"transformer_blocks.0.attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0"))}


def _unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def _inputs(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.tensor([10, 500, 900][:n] + [300] * max(0, n - 3)),
            torch.randn(n, 77, 32, generator=g))


def _randomise(net, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in adapted_layers(net):
            m.spm_up.weight.copy_(torch.randn(m.spm_up.weight.shape, generator=g))


def _effective_weight(layer) -> torch.Tensor:
    """The layer's linear map, read off its outputs on the identity basis (bias removed), with the gate at 1."""
    with torch.no_grad(), fixed_gate_of(layer, 1.0):
        if isinstance(layer, nn.Conv2d):
            eye = torch.eye(layer.in_channels, dtype=layer.weight.dtype).view(layer.in_channels, -1, 1, 1)
            zero = torch.zeros(1, layer.in_channels, 1, 1, dtype=layer.weight.dtype)
            return (layer(eye) - layer(zero)).flatten(1).T
        eye = torch.eye(layer.in_features, dtype=layer.weight.dtype)
        zero = torch.zeros(1, layer.in_features, dtype=layer.weight.dtype)
        return (layer(eye) - layer(zero)).T


class fixed_gate_of:
    """The adapter's gate pinned while a single layer is called outside a UNet forward."""

    def __init__(self, layer, value):
        self.gate, self.value = layer._spm_gate, value

    def __enter__(self):
        self.gate.current = self.value

    def __exit__(self, *exc):
        self.gate.current = None


def test_a_fresh_adapter_leaves_the_unet_output_unchanged():
    net = _unet()
    z, t, e = _inputs()
    before = net(z, t, encoder_hidden_states=e).sample
    attach(net, e[0])
    assert all(not m.spm_up.weight.detach().any() for _, m in adapted_layers(net))  # every U starts at 0
    torch.testing.assert_close(net(z, t, encoder_hidden_states=e).sample, before, rtol=0, atol=0)


def test_only_the_transformer_blocks_linear_and_1x1_conv_layers_are_adapted():
    net = _unet()
    blocks = [n for n, m in net.named_modules() if type(m).__name__ == "Transformer2DModel"]
    params = attach(net, torch.randn(77, 32))
    names = {n for n, _ in adapted_layers(net)}
    assert names == {f"{b}.{layer}" for b in blocks for layer in BLOCK_LAYERS}
    expected = sum(m.in_features + m.out_features if isinstance(m, nn.Linear) else m.in_channels + m.out_channels
                   for _, m in adapted_layers(net))
    assert sum(p.numel() for p in params) == expected  # rank 1: one column and one row per layer


@pytest.mark.parametrize("how", ["random", "trained"])
def test_every_adapted_layer_changes_its_weight_by_a_rank_one_matrix(how):
    net = _unet().double()  # float64, so the weight read off the outputs is exact to ~1e-15
    z, t, e = (x.double() if x.is_floating_point() else x for x in _inputs())
    base = {n: _plain_weight(m) for n, m in adapters.target_layers(net)}
    params = attach(net, e[0])
    net.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if how == "random":
        _randomise(net)
    else:  # one AdamW step on a loss through the whole UNet: only the adapters move
        frozen = {k: v.clone() for k, v in net.state_dict().items() if ".spm_" not in k and not k.startswith("spm.")}
        opt = torch.optim.AdamW(params, lr=1e-2)
        with fixed_gate(net, 1.0):
            net(z, t, encoder_hidden_states=e).sample.pow(2).mean().backward()
        opt.step()
        after = net.state_dict()
        assert all(torch.equal(after[k], v) for k, v in frozen.items())
    for name, layer in adapted_layers(net):
        delta = _effective_weight(layer) - base[name]
        assert torch.linalg.matrix_rank(delta, rtol=1e-9).item() == 1, name
        torch.testing.assert_close(delta, layer.delta_weight().detach().flatten(1), rtol=1e-9, atol=1e-12)


def _plain_weight(m) -> torch.Tensor:
    return m.weight.detach().flatten(1).clone()


def test_transport_gates_the_concept_at_one_and_an_orthogonal_prompt_at_zero():
    net = _unet()
    z, t, _ = _inputs(3)
    g = torch.Generator().manual_seed(5)
    concept = torch.randn(77, 32, generator=g)
    other = torch.randn(77, 32, generator=g)
    orth = other - (other * concept).sum() / concept.pow(2).sum() * concept  # ⟂ the concept, flattened
    theta = 0.7
    mixed = math.cos(theta) * concept / concept.norm() + math.sin(theta) * orth / orth.norm()
    e = torch.stack([concept, orth, mixed * concept.norm()])
    base = net(z, t, encoder_hidden_states=e).sample
    attach(net, concept)
    _randomise(net)
    gated = net(z, t, encoder_hidden_states=e).sample
    with fixed_gate(net, 1.0):
        full = net(z, t, encoder_hidden_states=e).sample
    assert (full - base).abs().amax() > 1e-2  # the adapters do something
    torch.testing.assert_close(gated[0], full[0], rtol=1e-5, atol=1e-5)  # gate 1
    torch.testing.assert_close(gated[1], base[1], rtol=1e-5, atol=1e-5)  # gate 0
    expected = F.cosine_similarity(e.flatten(1), concept.flatten()[None], dim=1).clamp(0, 1) ** 2
    torch.testing.assert_close(net.spm(e), expected, rtol=1e-5, atol=1e-6)
    assert abs(float(expected[2]) - math.cos(theta) ** 2) < 1e-5


def test_without_transport_every_prompt_gets_the_whole_adapter():
    net = _unet()
    z, t, e = _inputs()
    attach(net, e[0], transport=False)
    _randomise(net)
    out = net(z, t, encoder_hidden_states=e).sample
    with fixed_gate(net, 1.0):
        torch.testing.assert_close(out, net(z, t, encoder_hidden_states=e).sample, rtol=0, atol=0)


def test_detaching_restores_the_original_modules():
    net = _unet()
    z, t, e = _inputs()
    before_out = net(z, t, encoder_hidden_states=e).sample
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    modules = dict(net.named_modules())
    types = {n: type(m) for n, m in modules.items()}
    attach(net, e[0])
    _randomise(net)
    detach(net)
    assert type(net) is types[""] and not hasattr(net, "spm")
    after = dict(net.named_modules())
    assert after.keys() == modules.keys() and all(after[n] is modules[n] for n in modules)
    assert all(type(m) is types[n] for n, m in after.items())
    state = net.state_dict()
    assert state.keys() == before_state.keys() and all(torch.equal(state[k], v) for k, v in before_state.items())
    torch.testing.assert_close(net(z, t, encoder_hidden_states=e).sample, before_out, rtol=0, atol=0)


def test_a_saved_adapted_unet_is_rebuilt_from_its_state_and_copies_keep_their_own_gate():
    net = _unet()
    z, t, e = _inputs()
    attach(net, e[0], power=1.0)
    _randomise(net)
    want = net(z, t, encoder_hidden_states=e).sample
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = attach_from_state(_unet(seed=9), state)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(z, t, encoder_hidden_states=e).sample, want, rtol=0, atol=0)
    twin = copy.deepcopy(net)  # the time-to-target bisection probes a deep copy
    with fixed_gate(net, 0.0):
        torch.testing.assert_close(twin(z, t, encoder_hidden_states=e).sample, want, rtol=0, atol=0)


def test_latent_anchors_are_random_directions_at_0_8_to_1_2_of_the_concept_norm():
    torch.manual_seed(0)
    target = torch.randn(77, 32)
    a = sample_anchors(target, 64)
    ratio = a.flatten(1).norm(dim=1) / target.norm()
    assert a.shape == (64, 77, 32) and ratio.min() >= 0.8 and ratio.max() <= 1.2 and ratio.std() > 0.05
    cos = F.cosine_similarity(a.flatten(1), target.flatten()[None], dim=1)
    assert cos.abs().max() < 0.15  # 2,464 dimensions: random directions are nearly orthogonal


def test_the_reference_anchor_batch_is_the_second_half_of_null_anchor_pairs():
    target, null = torch.randn(77, 32), torch.randn(77, 32)
    torch.manual_seed(3)
    a = sample_anchors(target, 4)
    torch.manual_seed(3)
    ref = anchor_batch(target, null, 4, "reference")
    # the released code builds [∅, a1, ∅, a2, ∅, a3, ∅, a4] and its guidance-1 prediction keeps the second half
    torch.testing.assert_close(ref, torch.stack([null, a[2], null, a[3]]), rtol=0, atol=0)
    torch.manual_seed(3)
    torch.testing.assert_close(anchor_batch(target, null, 4, "random"), a, rtol=0, atol=0)


def test_the_learning_rate_schedule_is_diffusers_cosine_with_hard_restarts():
    from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, 50, 300, num_cycles=3)
    ours = lr_factor("cosine_restarts", 300, 50, 3)
    for step in range(0, 320, 7):
        assert abs(sched.lr_lambdas[0](step) - ours(step)) < 1e-12, step
    assert lr_factor("constant", 300, 50, 3)(0) == 1.0
