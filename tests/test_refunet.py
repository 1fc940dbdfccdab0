"""The reference class-conditional U-Net: sizes, parameter names, the spec's building blocks and the
CondUNet-compatible interface. Full-size models are only built on the meta device (no forwards)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bench.models.refunet import CIFAR10_CONFIG, STL10_CONFIG, AttnBlock, Downsample, RefUNet, timestep_embedding

TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.1, resolution=8,
            in_channels=1, out_channels=1, norm_groups=8)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def meta_net(config: dict, num_classes: int = 10) -> RefUNet:
    with torch.device("meta"):
        return RefUNet(config, num_classes)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return RefUNet(TINY, 10)


# --- sizes and names ---------------------------------------------------------------------------------
def test_parameter_counts_match_the_papers_models():
    assert n_params(meta_net(CIFAR10_CONFIG)) == 38_632_323
    assert n_params(meta_net(STL10_CONFIG)) == 83_159_683
    # without the class branch: google/ddpm-cifar10-32's size
    assert n_params(meta_net({**CIFAR10_CONFIG, "class_cond": False})) == 35_746_307


def test_class_branch_size_follows_the_spec():
    ch, e, k = 128, 512, 10
    widths = [ch * m for m in CIFAR10_CONFIG["ch_mult"]]
    # ResBlock output widths: 2 per encoder level, 2 in the middle, 3 per decoder level
    block_outs = [w for w in widths for _ in range(2)] + [widths[-1]] * 2 + [w for w in widths for _ in range(3)]
    branch = k * ch + ch + (ch * e + e) + (e * e + e) + e * sum(block_outs)
    cond = n_params(meta_net(CIFAR10_CONFIG, k))
    uncond = n_params(meta_net({**CIFAR10_CONFIG, "class_cond": False}, k))
    assert cond - uncond == branch


def test_state_dict_uses_the_reference_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in meta_net(CIFAR10_CONFIG).state_dict().items()}
    expect = {
        "temb.dense.0.weight": (512, 128), "temb.dense.1.weight": (512, 512),
        "classes_emb.weight": (10, 128), "null_classes_emb": (128,),
        "cemb.dense.0.weight": (512, 128), "cemb.dense.1.bias": (512,),
        "conv_in.weight": (128, 3, 3, 3),
        "down.0.block.0.norm1.weight": (128,), "down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "down.0.block.0.temb_cemb_proj.weight": (128, 1024), "down.0.block.0.conv2.weight": (128, 128, 3, 3),
        "down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "down.1.attn.1.q.weight": (256, 256, 1, 1), "down.1.attn.0.proj_out.weight": (256, 256, 1, 1),
        "down.0.downsample.conv.weight": (128, 128, 3, 3),
        "mid.block_1.temb_cemb_proj.weight": (256, 1024), "mid.attn_1.norm.weight": (256,),
        "mid.block_2.conv2.weight": (256, 256, 3, 3),
        "up.3.block.0.conv1.weight": (256, 512, 3, 3), "up.1.attn.2.v.weight": (256, 256, 1, 1),
        "up.0.block.2.nin_shortcut.weight": (128, 256, 1, 1), "up.1.upsample.conv.weight": (256, 256, 3, 3),
        "norm_out.weight": (128,), "conv_out.weight": (3, 128, 3, 3),
    }
    for k, s in expect.items():
        assert shapes.get(k) == s, k
    # attention only at 16x16 (level 1 going down, level 1 going up), no upsampling at level 0
    assert not any(k.startswith(("down.0.attn.", "down.2.attn.", "up.0.attn.", "up.2.attn.")) for k in shapes)
    assert not any(k.startswith(("up.0.upsample.", "down.3.downsample.")) for k in shapes)
    assert not any(k.startswith("module.") for k in shapes)


def test_group_norms_use_eps_1e_6(tiny):
    norms = [m for m in tiny.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.eps == 1e-6 and m.num_groups == 8 for m in norms)


# --- spec building blocks ------------------------------------------------------------------------------
def test_timestep_embedding_matches_diffusers_and_the_formula():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.0, 500.5, 999.0])
    for dim in (32, 128):
        ours = timestep_embedding(t, dim)
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        assert ours.shape == (5, dim)
        # same formula; diffusers divides after multiplying, so float32 rounding of the argument at
        # t ~ 1000 differs by a few 1e-5
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    e = timestep_embedding(torch.tensor([3.0]), 128)[0]
    half = 64
    f5 = math.exp(-math.log(10000) * 5 / (half - 1))
    assert e[5].item() == pytest.approx(math.sin(3.0 * f5), abs=1e-6)
    assert e[half + 5].item() == pytest.approx(math.cos(3.0 * f5), abs=1e-6)
    assert e[0].item() == pytest.approx(math.sin(3.0), abs=1e-6)  # f_0 = 1, sin first


def test_attention_is_single_head_softmax_over_positions():
    torch.manual_seed(1)
    blk = AttnBlock(16, 8)
    x = torch.randn(2, 16, 4, 4)
    b, c, h, w = x.shape
    hn = blk.norm(x)
    q, k, v = (m(hn).reshape(b, c, h * w) for m in (blk.q, blk.k, blk.v))
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, hw_q, hw_k)
    out = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
    torch.testing.assert_close(blk(x), x + blk.proj_out(out), rtol=1e-5, atol=1e-5)


def test_downsample_pads_right_and_bottom():
    torch.manual_seed(2)
    d = Downsample(4)
    x = torch.randn(1, 4, 8, 8)
    padded = torch.cat([torch.cat([x, torch.zeros(1, 4, 8, 1)], 3), torch.zeros(1, 4, 1, 9)], 2)
    torch.testing.assert_close(d(x), F.conv2d(padded, d.conv.weight, d.conv.bias, stride=2))
    assert d(x).shape == (1, 4, 4, 4)


# --- forward -------------------------------------------------------------------------------------------
def test_tiny_forward_shape_and_interface(tiny):
    assert tiny.num_classes == 10 and tiny.null_class == 10
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 10.0, 999.0])
    out = tiny.eval()(x, t, torch.tensor([0, 5, 10]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # integer timesteps work too
    torch.testing.assert_close(tiny(x, t.long(), torch.tensor([0, 5, 10])), out)


def test_null_class_uses_the_learned_null_vector(tiny):
    tiny.eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 500.0])
    c0, null = torch.zeros(2, dtype=torch.long), torch.full((2,), tiny.null_class)
    assert not torch.allclose(tiny(x, t, c0), tiny(x, t, null))
    with torch.no_grad():
        tiny.null_classes_emb.copy_(tiny.classes_emb.weight[3])
    torch.testing.assert_close(tiny(x, t, null), tiny(x, t, torch.full((2,), 3)))


def test_dropout_only_in_train_mode(tiny):
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([1, 2])
    tiny.eval()
    assert torch.equal(tiny(x, t, c), tiny(x, t, c))
    tiny.train()
    assert not torch.equal(tiny(x, t, c), tiny(x, t, c))


def test_gradients_reach_every_parameter(tiny):
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 50.0, 300.0, 900.0])
    tiny(x, t, torch.tensor([0, 1, 10, 10])).pow(2).mean().backward()
    for name, p in tiny.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert tiny.null_classes_emb.grad.abs().sum() > 0
    g = tiny.classes_emb.weight.grad
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0 and g[2:].abs().sum() == 0


def test_unconditional_variant_ignores_labels():
    torch.manual_seed(0)
    net = RefUNet({**TINY, "class_cond": False}, 10).eval()
    assert not any("class" in k or k.startswith("cemb.") for k in net.state_dict())
    assert "down.0.block.0.temb_proj.weight" in net.state_dict()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 4.0])
    torch.testing.assert_close(net(x, t, torch.tensor([0, 1])), net(x, t, None))


def test_channels_last_and_bf16_autocast(tiny):
    tiny.eval()
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([4, 10])
    ref = tiny(x, t, c)
    cl = tiny.clone().to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.to(memory_format=torch.channels_last), t, c), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = tiny(x, t, c)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_forward_traces_as_one_graph(tiny):
    """No host syncs or other graph breaks (dynamo only; no inductor compile on a shared CPU)."""
    torch._dynamo.reset()
    compiled = torch.compile(tiny.eval(), backend="eager", fullgraph=True)
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([4, 10])
    torch.testing.assert_close(compiled(x, t, c), tiny(x, t, c))
    torch._dynamo.reset()


# --- save / load / clone ---------------------------------------------------------------------------------
def test_save_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["arch"] == "reference-unet" and meta["num_classes"] == 10
    assert meta["config"]["ch"] == 32 and meta["config"]["norm_groups"] == 8
    assert (tmp_path / "m" / "model.safetensors").is_file()
    back = RefUNet.load(tmp_path / "m", 10)
    assert not back.training
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"10 classes, expected 7"):
        RefUNet.load(tmp_path / "m", 7)


def test_clone_is_independent_and_hook_free(tiny):
    calls = []
    tiny.register_forward_hook(lambda *a: calls.append(1))
    twin = tiny.clone()
    assert isinstance(twin, RefUNet) and twin.null_class == 10
    twin(torch.randn(1, 1, 8, 8), torch.tensor([1.0]), torch.tensor([2]))
    assert calls == []
    with torch.no_grad():
        twin.conv_in.weight.add_(1.0)
    assert not torch.equal(twin.conv_in.weight, tiny.conv_in.weight)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="ch_mult"):
        RefUNet({k: v for k, v in TINY.items() if k != "ch_mult"}, 10)
