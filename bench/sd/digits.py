"""``sd-digits``'s model: the micro text-to-image model trained by the harness on captioned digits.

The 8x8 scikit-learn digits are upsampled (bilinear) to 16 px RGB, captioned "a handwritten digit seven",
and the micro VAE is trained first as a lightly regularised autoencoder, then the micro UNet (wider than the
smoke model's) on its latents with SD's element-mean loss and 10% caption dropout (so ε(z, t, ∅) is the
unconditional model that guidance needs). The random text encoder stays frozen: the UNet learns to read
its embeddings of the ten captions. The result is a diffusers folder, cached like the class tasks' base
models, that every concept method loads like a user's Stable Diffusion folder.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.sd.latent import ldm_loss, scaled_linear_alphas
from bench.sd.micro import build_micro_sd, write_char_tokenizer
from bench.tasks.digits import DIGITS
from bench.tasks.sd import DigitsSDRecipe, caption


def digit_images(px: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Digits in [-1, 1] as (N, 3, px, px) RGB, with labels (the digits task's stratified split)."""
    s = DIGITS.load_splits()
    x, y = (s.train_x, s.train_y) if split == "train" else (s.test_x, s.test_y)
    x = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.repeat(1, 3, 1, 1), y


def to_digits_space(imgs_u8: torch.Tensor) -> torch.Tensor:
    """Generated RGB uint8 images -> the digits classifier's input: grey, 8x8 (area), in [-1, 1]."""
    x = imgs_u8.float().mean(1, keepdim=True) / 127.5 - 1.0
    return F.adaptive_avg_pool2d(x, 8)


def train_digits_sd(out: Path, recipe: DigitsSDRecipe, log=print) -> dict:
    """Train the VAE then the UNet and save the pipeline to ``out`` (a diffusers folder); returns the meta."""
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    x, y = digit_images(recipe.px)
    pipe = build_micro_sd(recipe.seed, recipe.px, unet_overrides={"block_out_channels": recipe.unet_channels,
                                                                   "norm_num_groups": 8})
    vae, unet, text, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    t0 = time.perf_counter()

    # 1. the VAE: reconstruction + a small KL, so latents carry the digit and stay near N(0, s^2)

    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=recipe.vae_lr)
    bar = tqdm(total=recipe.vae_steps + recipe.unet_steps, desc="sd-digits base (VAE, then UNet)",
               dynamic_ncols=True, leave=False)
    for step in range(recipe.vae_steps):
        idx = torch.randint(0, len(x), (recipe.batch,), generator=g)
        post = vae.encode(x[idx]).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / post.mean[0].numel()
        loss = F.mse_loss(rec, x[idx]) + recipe.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if step % 200 == 0 or step + 1 == recipe.vae_steps:
            log(f"vae {step + 1}/{recipe.vae_steps}: loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = torch.cat([vae.encode(x[s:s + 256]).latent_dist.mean for s in range(0, len(x), 256)])
        scaling = float(1.0 / mean.std())
        recon = torch.cat([vae.decode(mean[s:s + 256]).sample for s in range(0, len(x), 256)])
        recon_mse = float(F.mse_loss(recon, x))
    vae.register_to_config(scaling_factor=scaling)
    vae_s = time.perf_counter() - t0

    # 2. the UNet on latents with the frozen text encoder's caption embeddings
    text.eval().requires_grad_(False)
    with torch.no_grad():
        ids = tok([caption(k) for k in range(10)] + [""], padding="max_length", max_length=77,
                  truncation=True, return_tensors="pt").input_ids
        emb = text(ids)[0]
    ac = scaled_linear_alphas().float()
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, recipe.unet_steps) / recipe.unet_steps)))
    t1 = time.perf_counter()
    for step in range(recipe.unet_steps):
        idx = torch.randint(0, len(x), (recipe.batch,), generator=g)
        with torch.no_grad():
            z0 = vae.encode(x[idx]).latent_dist.sample() * scaling
        cls = y[idx].clone()
        cls[torch.rand(len(cls), generator=g) < recipe.p_drop] = 10  # caption dropout -> ""
        loss = ldm_loss(unet, ac, z0, emb[cls])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        if step % 250 == 0 or step + 1 == recipe.unet_steps:
            log(f"unet {step + 1}/{recipe.unet_steps}: loss {loss.item():.4f}")
    bar.close()
    unet_s = time.perf_counter() - t1
    unet.eval()
    pipe.save_pretrained(out, safe_serialization=True)

    shutil.rmtree(out / "tokenizer")
    write_char_tokenizer(out / "tokenizer")
    return {"kind": "sd-digits-base", "recipe": asdict(recipe), "vae_seconds": vae_s, "unet_seconds": unet_s,
            "train_seconds": time.perf_counter() - t0, "scaling_factor": scaling, "vae_recon_mse": recon_mse,
            "steps": recipe.vae_steps + recipe.unet_steps}
