"""Loading users' base models: the reference training checkpoint (EMA and raw), safetensors files,
RefUNet folders, diffusers folders, and the errors for mismatched or unreadable inputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from bench.core.errors import BenchError
from bench.models.checkpoints import load_base_model, save_reference_checkpoint
from bench.models.nets import CondUNet
from bench.models.refunet import RefUNet
from bench.tasks.digits import DIGITS

TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.1, resolution=8,
            in_channels=1, out_channels=1, norm_groups=8)
REF_ARCH = {"arch": "reference-unet", "config": TINY}
DIFF_ARCH = {"arch": "diffusers-unet", "config": DIGITS.unet_config}


def ref_net(seed: int, config: dict = TINY) -> RefUNet:
    torch.manual_seed(seed)
    return RefUNet(config, 10)


def diff_net(seed: int) -> CondUNet:
    torch.manual_seed(seed)
    return CondUNet(DIGITS.unet_config, 10)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 600.0]), torch.tensor([3, 10])
    with torch.no_grad():
        return torch.allclose(a.eval()(x, t, c), b.eval()(x, t, c))


# --- the reference training checkpoint -----------------------------------------------------------------
def test_reference_list_written_by_hand_loads_ema_and_raw(tmp_path):
    """The list the reference trainer saves: DataParallel-prefixed model state, optimizer state, step
    and the EMA helper's shadow (keys of the unwrapped module)."""
    raw, ema = ref_net(0), ref_net(1)
    opt = torch.optim.Adam(raw.parameters(), lr=2e-4)
    raw(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 10])).pow(2).mean().backward()
    opt.step()  # the optimizer state now holds tensors (exp_avg, exp_avg_sq, step)
    states = [{f"module.{k}": v for k, v in raw.state_dict().items()}, opt.state_dict(), 4999,
              {k: v.clone() for k, v in ema.state_dict().items()}]
    path = tmp_path / "ckpt.pth"
    torch.save(states, path)
    got_ema = load_base_model(path, REF_ARCH, 10)  # EMA is the default
    got_raw = load_base_model(path, REF_ARCH, 10, weights="raw")
    assert isinstance(got_ema, RefUNet) and not got_ema.training
    assert same_weights(got_ema, ema) and same_weights(got_raw, raw)
    assert not same_weights(got_ema, got_raw)


def test_save_reference_checkpoint_round_trip(tmp_path):
    raw, ema = ref_net(0), ref_net(1)
    opt = torch.optim.Adam(raw.parameters(), lr=2e-4)
    path = tmp_path / "out" / "ckpt.pth"
    save_reference_checkpoint(raw, path, ema_state=ema.state_dict(), step=123, optimizer_state=opt.state_dict())
    states = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(states, list) and len(states) == 4 and states[2] == 123
    assert all(k.startswith("module.") for k in states[0])
    assert set(states[3]) == set(ema.state_dict())
    assert states[1]["param_groups"][0]["lr"] == 2e-4
    assert same_weights(load_base_model(path, REF_ARCH, 10, "ema"), ema)
    assert same_weights(load_base_model(path, REF_ARCH, 10, "raw"), raw)


def test_module_prefixed_ema_shadow_is_accepted(tmp_path):
    raw, ema = ref_net(0), ref_net(1)
    path = tmp_path / "ckpt.pt"
    torch.save([{f"module.{k}": v for k, v in raw.state_dict().items()}, {}, 7,
                {f"module.{k}": v for k, v in ema.state_dict().items()}], path)
    assert same_weights(load_base_model(path, REF_ARCH, 10), ema)


def test_ema_from_a_checkpoint_without_ema_fails_loudly(tmp_path):
    raw = ref_net(0)
    path = tmp_path / "ckpt.pth"
    save_reference_checkpoint(raw, path, ema_state=None, step=5, optimizer_state=None)
    assert len(torch.load(path, weights_only=True)) == 3
    with pytest.raises(BenchError, match=r"no EMA shadow; use --base-weights raw") as err:
        load_base_model(path, REF_ARCH, 10, weights="ema")
    assert str(path) in str(err.value)
    assert same_weights(load_base_model(path, REF_ARCH, 10, weights="raw"), raw)


# --- other formats -------------------------------------------------------------------------------------
def test_safetensors_file_of_a_refunet(tmp_path):
    net = ref_net(3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "m.safetensors"))
    got = load_base_model(tmp_path / "m.safetensors", REF_ARCH, 10)
    assert same_weights(got, net) and same_outputs(got, net)


def test_safetensors_file_of_a_condunet(tmp_path):
    net = diff_net(3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "c.safetensors"))
    got = load_base_model(tmp_path / "c.safetensors", DIFF_ARCH, 10)
    assert isinstance(got, CondUNet) and same_weights(got, net)


def test_refunet_folder(tmp_path):
    net = ref_net(4)
    net.save(tmp_path / "m")
    got = load_base_model(tmp_path / "m", REF_ARCH, 10)
    assert isinstance(got, RefUNet) and same_weights(got, net) and same_outputs(got, net)
    with pytest.raises(BenchError, match=r"10 classes.*task has 7"):
        load_base_model(tmp_path / "m", {"arch": "reference-unet", "config": TINY}, 7)


def test_diffusers_unet_folder_and_pipeline_folder(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    net = diff_net(5)
    net.save(tmp_path / "bare")  # a UNet2DModel folder
    got = load_base_model(tmp_path / "bare", DIFF_ARCH, 10)
    assert isinstance(got, CondUNet) and got.null_class == 10
    assert got.unet.config.num_class_embeds == 11
    assert same_weights(got, net) and same_outputs(got, net)

    DDPMPipeline(unet=net.unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "unet").is_dir()
    assert same_weights(load_base_model(tmp_path / "pipe", DIFF_ARCH, 10), net)


def test_harness_folder_with_raw_and_ema(tmp_path):
    raw, ema = diff_net(6), diff_net(7)
    raw.save(tmp_path / "base" / "raw")
    ema.save(tmp_path / "base" / "ema")
    assert same_weights(load_base_model(tmp_path / "base", DIFF_ARCH, 10, "ema"), ema)
    assert same_weights(load_base_model(tmp_path / "base", DIFF_ARCH, 10, "raw"), raw)
    ref_net(0).save(tmp_path / "only_raw" / "raw")
    with pytest.raises(BenchError, match=r"use --base-weights raw"):
        load_base_model(tmp_path / "only_raw", REF_ARCH, 10, "ema")


# --- mismatches and bad inputs ------------------------------------------------------------------------------
def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path):
    narrow = ref_net(0, {**TINY, "ch": 16})  # E = 4*16 = 64 instead of 4*32 = 128
    path = tmp_path / "narrow.pth"
    save_reference_checkpoint(narrow, path, ema_state=narrow.state_dict(), step=1, optimizer_state=None)
    with pytest.raises(BenchError) as err:
        load_base_model(path, REF_ARCH, 10)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "null_classes_emb: expected [32], found [16]" in msg
    assert "temb.dense.0.weight: expected [128, 32], found [64, 16]" in msg
    assert "0 missing, 0 unexpected" in msg
    assert msg.count("expected [") == 5  # at most five keys named


def test_other_architecture_counts_missing_and_unexpected(tmp_path):
    net = diff_net(0)
    net.save(tmp_path / "bare")
    with pytest.raises(BenchError, match=r"missing.*unexpected.*looks like a diffusers-unet") as err:
        load_base_model(tmp_path / "bare", REF_ARCH, 10)
    n_ref, n_diff = len(ref_net(0).state_dict()), len(net.state_dict())
    msg = str(err.value)
    assert f"{n_ref} missing, {n_diff} unexpected" in msg
    assert "null_classes_emb: expected [32], found none" in msg
    assert "unet.conv_in.weight: expected none, found [32, 1, 3, 3]" in msg


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    with pytest.raises(BenchError, match="nope.pth"):
        load_base_model(tmp_path / "nope.pth", REF_ARCH, 10)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="junk.pth"):
        load_base_model(junk, REF_ARCH, 10)
    bad_st = tmp_path / "junk.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(BenchError, match="junk.safetensors"):
        load_base_model(bad_st, REF_ARCH, 10)
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(BenchError, match="unrecognised"):
        load_base_model(odd, REF_ARCH, 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="not a model folder"):
        load_base_model(tmp_path / "empty", REF_ARCH, 10)
    with pytest.raises(BenchError, match="'best'"):
        load_base_model(junk, REF_ARCH, 10, weights="best")
