"""The micro SD smoke model (spec sd-concepts.md §1.6) and SD folder validation and loading (§0.2, §2.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.core.errors import BenchError
from bench.sd.loading import (
    base_hash,
    folder_hashes,
    load_sd,
    param_set,
    sd_schedule,
    validate_sd_folder,
)
from bench.sd.micro import build_micro_sd, char_vocab, micro_sd_dir, write_char_tokenizer


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def micro_dir(cache_root) -> Path:
    return micro_sd_dir(cache_root)


@pytest.fixture(scope="module")
def parts(micro_dir):
    return load_sd(micro_dir, "cpu", strict_v1=False)


@pytest.fixture
def copy_of(micro_dir, tmp_path):
    def make() -> Path:
        dst = tmp_path / "sd"
        shutil.copytree(micro_dir, dst)
        return dst

    return make


def _edit(file: Path, **changes) -> None:
    cfg = json.loads(file.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    file.write_text(json.dumps(cfg))


# ---------------------------------------------------------------------------------------------- micro model


def test_char_tokenizer_files(tmp_path):
    write_char_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == char_vocab() and len(vocab) == 514
    assert vocab["<|startoftext|>"] == 512 and vocab["<|endoftext|>"] == 513
    assert vocab["a</w>"] == 320  # CLIP's byte order: single characters get real CLIP's ids
    assert len({k for k in vocab if k.endswith("</w>")}) == 256
    assert (tmp_path / "merges.txt").read_text().strip() == "#version: 0.2"
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 77 and cfg["bos_token"] == "<|startoftext|>"
    assert cfg["eos_token"] == cfg["pad_token"] == cfg["unk_token"] == "<|endoftext|>"


def test_micro_counts_and_tokenizer(parts):
    assert _n(parts.unet) == 66_844
    assert _n(parts.vae) == 43_711
    assert _n(parts.text_encoder) == 36_064
    tok = parts.tokenizer
    assert len(tok) == 514 and tok.model_max_length == 77
    ids = tok("ab").input_ids
    assert ids == [tok.bos_token_id, ids[1], ids[2], tok.eos_token_id] and len(set(ids)) == 4
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["a", "b</w>"]
    assert tok.pad_token_id == tok.eos_token_id == 513


def test_micro_load_state(parts, micro_dir):
    assert parts.vae_scale_factor == 2
    assert parts.scaling_factor == pytest.approx(0.18215)
    assert parts.scheduler_config["prediction_type"] == "epsilon"
    assert not any(p.requires_grad for p in parts.vae.parameters())
    assert not any(p.requires_grad for p in parts.text_encoder.parameters())
    assert not parts.vae.training and not parts.text_encoder.training
    hashes = folder_hashes(micro_dir)
    assert list(hashes) == sorted(hashes) and len(hashes) == 3
    assert parts.info["file_hashes"] == hashes
    assert parts.info["base_hash"] == base_hash(hashes) == base_hash(dict(reversed(list(hashes.items()))))


def test_round_trip_identical_outputs(parts, micro_dir):
    assert micro_sd_dir(micro_dir.parent.parent) == micro_dir  # reused, not rebuilt
    pipe = build_micro_sd(seed=0)
    assert pipe.vae_scale_factor == 2
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    ids = parts.tokenizer(["a cat", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        e_mem = pipe.text_encoder(ids)[0]
        e_disk = parts.text_encoder(ids)[0]
        assert e_mem.shape == (2, 77, 32) and torch.equal(e_mem, e_disk)
        assert torch.equal(pipe.unet(z, t, e_mem).sample, parts.unet(z, t, e_disk).sample)


# ---------------------------------------------------------------------------------------------- schedule, sets


def test_schedule_check_values():
    a = sd_schedule({"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012})
    assert a.shape == (1000,)
    assert round(float(a[0].sqrt()), 5) == 0.99957
    assert round(float(a[625].sqrt()), 5) == 0.37117
    assert round(float((1 - a[625]).sqrt()), 5) == 0.92856
    assert round(float(a[999].sqrt()), 5) == 0.06826


def test_schedule_matches_diffusers(parts):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler.from_config(parts.scheduler_config).alphas_cumprod
    assert torch.allclose(sd_schedule(parts.scheduler_config), ref, atol=1e-6)


def test_param_sets(parts):
    unet = parts.unet
    x = param_set(unet, "xattn")
    assert len(x) == 20 and sum(p.numel() for _, p in x) == 6_208
    assert all("attn2" in n for n, _ in x)
    full = param_set(unet, "full")
    assert len(full) == 208 and sum(p.numel() for _, p in full) == 66_844
    nox = param_set(unet, "noxattn")
    assert len(nox) == 180
    assert not any(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n, _ in nox)
    esd = dict(param_set(unet, "esd-u-2024"))
    assert "conv_out.weight" in esd and "time_embedding.linear_1.weight" in esd
    assert "conv_norm_out.weight" not in esd and not any("attn2" in n or "norm" in n for n in esd)
    with pytest.raises(BenchError, match="unknown parameter set"):
        param_set(unet, "attn")


# ---------------------------------------------------------------------------------------------- validation


def test_missing_unet(copy_of):
    d = copy_of()
    shutil.rmtree(d / "unet")
    with pytest.raises(BenchError, match=r"place the UNet under .*/unet/ \(diffusion_pytorch_model.safetensors"):
        validate_sd_folder(d, strict_v1=False)


def test_missing_model_index_and_folder(copy_of, tmp_path):
    d = copy_of()
    (d / "model_index.json").unlink()
    with pytest.raises(BenchError, match=r"place model_index.json under"):
        validate_sd_folder(d, strict_v1=False)
    with pytest.raises(BenchError, match="does not exist"):
        validate_sd_folder(tmp_path / "nowhere")


def test_missing_tokenizer_and_scheduler(copy_of):
    d = copy_of()
    (d / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(BenchError, match=r"place the tokenizer under .*/tokenizer/"):
        validate_sd_folder(d, strict_v1=False)
    write_char_tokenizer(d / "tokenizer")
    (d / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(BenchError, match=r"place the scheduler under .*/scheduler/"):
        validate_sd_folder(d, strict_v1=False)


def test_v_prediction_refused(copy_of):
    d = copy_of()
    _edit(d / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    with pytest.raises(BenchError, match="prediction_type v_prediction is not supported: SD v1.x is epsilon"):
        validate_sd_folder(d, strict_v1=False)


def test_absent_keys_take_defaults(copy_of):
    d = copy_of()
    _edit(d / "scheduler" / "scheduler_config.json", prediction_type=None)
    _edit(d / "vae" / "config.json", scaling_factor=None)
    out = validate_sd_folder(d, strict_v1=False)
    assert out["configs"]["scheduler"]["prediction_type"] == "epsilon"
    assert out["configs"]["vae"]["scaling_factor"] == pytest.approx(0.18215)


def test_ckpt_refused(copy_of, tmp_path):
    ckpt = tmp_path / "sd-v1-4.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(BenchError, match=r"a CompVis .ckpt file: convert it to a diffusers folder first"):
        validate_sd_folder(ckpt)
    d = copy_of()
    (d / "model_index.json").unlink()
    (d / "v1-5-pruned.ckpt").write_bytes(b"x")
    with pytest.raises(BenchError, match=r"convert_original_stable_diffusion_to_diffusers.py"):
        validate_sd_folder(d, strict_v1=False)


def test_bin_only_needs_allow_pickle(copy_of):
    from safetensors.torch import load_file

    d = copy_of()
    st = d / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(st), d / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(BenchError, match=r".bin weights without safetensors are refused unless --allow-pickle"):
        validate_sd_folder(d, strict_v1=False)
    out = validate_sd_folder(d, strict_v1=False, allow_pickle=True)
    assert out["pickle"] and out["weights"]["unet"] == ["unet/diffusion_pytorch_model.bin"]
    assert "unet/diffusion_pytorch_model.bin" in folder_hashes(d)


def test_missing_weights(copy_of):
    d = copy_of()
    (d / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BenchError, match=r"place the VAE under .*/vae/"):
        validate_sd_folder(d, strict_v1=False)


def _make_v1_configs(d: Path) -> None:
    _edit(
        d / "unet" / "config.json",
        cross_attention_dim=768,
        block_out_channels=[320, 640, 1280, 1280],
        attention_head_dim=8,
        sample_size=64,
    )
    _edit(
        d / "text_encoder" / "config.json",
        hidden_size=768,
        num_hidden_layers=12,
        vocab_size=49408,
        max_position_embeddings=77,
    )


def test_strict_rejects_sd2_and_micro(copy_of, micro_dir):
    with pytest.raises(BenchError, match="cross_attention_dim 32; this task needs SD v1.x"):
        validate_sd_folder(micro_dir)
    d = copy_of()
    _make_v1_configs(d)
    _edit(d / "unet" / "config.json", cross_attention_dim=1024)
    sd2 = r"cross_attention_dim 1024 is Stable Diffusion 2.x; this task needs v1.x \(768\)"
    with pytest.raises(BenchError, match=sd2):
        validate_sd_folder(d)
    _edit(d / "unet" / "config.json", cross_attention_dim=2048, addition_embed_type="text_time")
    with pytest.raises(BenchError, match="SDXL"):
        validate_sd_folder(d)


def test_strict_config_values(copy_of):
    """A folder with v1.x configs passes every config check; the micro tokenizer then fails the id check."""
    d = copy_of()
    _make_v1_configs(d)
    _edit(d / "scheduler" / "scheduler_config.json", beta_schedule="linear")
    with pytest.raises(BenchError, match="beta_schedule linear is not SD v1.x's scaled_linear"):
        validate_sd_folder(d)
    _edit(d / "scheduler" / "scheduler_config.json", beta_schedule="scaled_linear")
    _edit(d / "vae" / "config.json", latent_channels=8)
    with pytest.raises(BenchError, match="latent_channels 8 is not SD v1.x's 4"):
        validate_sd_folder(d)
    _edit(d / "vae" / "config.json", latent_channels=4)
    _edit(d / "model_index.json", _class_name="StableDiffusionXLPipeline")
    with pytest.raises(BenchError, match="_class_name StableDiffusionXLPipeline is not StableDiffusionPipeline"):
        validate_sd_folder(d)
    _edit(d / "model_index.json", _class_name="StableDiffusionPipeline")
    with pytest.raises(BenchError, match=r"gives \[.*\] for 'a photo of a cat', not SD v1.x's"):
        validate_sd_folder(d)


def test_real_sd_tokenizer_ids(tmp_path):
    """Optional (§1.6): SD's real BPE from open-clip-torch gives the reference ids through the same check."""
    pytest.importorskip("open_clip")
    import gzip
    import importlib.resources

    from transformers import CLIPTokenizer

    try:
        bpe = importlib.resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    except FileNotFoundError:
        pytest.skip("open_clip has no bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(bpe).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    from bench.sd.micro import byte_unicode_table

    chars = list(byte_unicode_table().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    write_char_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
