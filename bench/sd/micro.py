"""The micro Stable Diffusion smoke model (spec sd-concepts.md §1.6): built in code, saved, reloaded.

Everything here runs offline: the tokenizer is a byte-level character vocabulary written to disk and
loaded only through ``CLIPTokenizer.from_pretrained(folder)``; no weights are downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from bench.core.hashing import make_temp_dir

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
CACHE_VERSION = "v1"

UNET_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=4,
    attention_head_dim=4,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=4,
)
TEXT_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def byte_unicode_table() -> dict[int, str]:
    """The GPT-2/CLIP reversible byte-to-unicode map, in CLIP's vocabulary order.

    Printable bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves and come first; the other
    68 bytes map to ``chr(256 + n)`` in byte order. With this order the single-character ids match real
    CLIP's (``a</w>`` = 320).
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    rest = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


def char_vocab() -> dict[str, int]:
    """514 ids: the 256 byte characters, the same with ``</w>``, then bos and eos."""
    chars = list(byte_unicode_table().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def write_char_tokenizer(folder: Path) -> None:
    """Write vocab.json, merges.txt (header only) and tokenizer_config.json for a character-level CLIP tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(char_vocab(), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def load_char_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def build_micro_sd(
    seed: int = 0,
    sample_size: int = 16,
    folder_for_tokenizer: Path | None = None,
    *,
    unet_overrides: dict | None = None,
    vae_overrides: dict | None = None,
    text_overrides: dict | None = None,
):
    """Build the §1.6 micro ``StableDiffusionPipeline`` in code (seeded, no download).

    ``sample_size`` is the image size in pixels (the VAE downsamples by 2, so the UNet works on
    ``sample_size // 2`` latents). ``folder_for_tokenizer`` receives the tokenizer files (a temporary
    folder when None; the tokenizer is loaded into memory before it is removed). The overrides update
    the UNet / VAE / text-encoder configs, e.g. ``unet_overrides={"block_out_channels": (32, 64)}``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if folder_for_tokenizer is None:
        with tempfile.TemporaryDirectory(prefix="micro-tok-") as tmp:
            write_char_tokenizer(Path(tmp))
            tok = load_char_tokenizer(Path(tmp))
    else:
        write_char_tokenizer(Path(folder_for_tokenizer))
        tok = load_char_tokenizer(Path(folder_for_tokenizer))

    vae_cfg = {**VAE_CONFIG, "sample_size": sample_size, **(vae_overrides or {})}
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    unet_cfg = {**UNET_CONFIG, "sample_size": sample_size // factor, **(unet_overrides or {})}
    text_cfg = {**TEXT_CONFIG, **(text_overrides or {})}

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **text_cfg,
        )
    )
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tok,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_micro_sd(folder: Path, seed: int = 0, **overrides) -> Path:
    """Build the micro model and save it as a diffusers folder (safetensors), atomically; returns ``folder``.

    ``overrides`` go to :func:`build_micro_sd` (``sample_size``, ``unet_overrides``, ...). The folder is
    written to a temporary sibling and renamed into place; an existing ``folder`` is replaced.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder.parent, folder.name)
    try:
        pipe = build_micro_sd(seed, **overrides)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # keep exactly the §1.6 tokenizer files (save_pretrained adds a tokenizer.json and extra keys)
        shutil.rmtree(tmp / "tokenizer")
        write_char_tokenizer(tmp / "tokenizer")
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def micro_sd_dir(cache_root: Path, seed: int = 0) -> Path:
    """``<cache_root>/sd-micro/seed<seed>-v1/``: the default micro model folder, built on first use."""
    folder = Path(cache_root) / "sd-micro" / f"seed{seed}-{CACHE_VERSION}"
    if not (folder / "model_index.json").is_file():
        try:
            write_micro_sd(folder, seed)
        except OSError:
            # another process renamed its copy into place first
            if not (folder / "model_index.json").is_file():
                raise
    return folder
