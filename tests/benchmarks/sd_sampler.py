"""Images/s of the concept tasks' sampler (guided DDIM + VAE decode) and seconds per full-UNet training step.

``--model micro`` times the micro smoke model (16 px) and ``--model sd-digits`` the harness-trained digits
model; ``--model sd-v1`` builds Stable Diffusion v1.x's UNet (859.52M parameters) and VAE from their configs
with random weights (no download) and times 512 px sampling: what an I2P or COCO evaluation costs on this
device. The text encoder is replaced by random embeddings of the right shape (77 x 768): it runs once per
prompt and does not matter for throughput.

    python tests/benchmarks/sd_sampler.py --model micro --batch 16,64
    python tests/benchmarks/sd_sampler.py --model sd-v1 --device cuda --dtype fp16 --batch 1,8,16,32 --steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import timed  # noqa: E402  (median of reps after warm-up, synchronised on CUDA)

from bench.sd.latent import SDModel, ddim_sample  # noqa: E402

SD_V1_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_V1_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                 block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4)
SCHED = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}


class RandomText:
    """Stands in for the text encoder: fixed random embeddings per prompt."""

    def __init__(self, dim: int, device) -> None:
        self.dim, self.device = dim, device

    def __call__(self, prompts):
        g = torch.Generator().manual_seed(0)
        return torch.randn((len(prompts), 77, self.dim), generator=g).to(self.device)


def build(model: str, device: torch.device, dtype: torch.dtype, cache: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if model == "sd-v1":
        unet = UNet2DConditionModel(**SD_V1_UNET)
        vae = AutoencoderKL(**SD_V1_VAE)
        m = SDModel(unet.to(device, dtype).eval(), vae.to(device, dtype).eval(), None, None, SCHED, 0.18215, 8,
                    device)
        return m, 512, 768
    from bench.sd.loading import load_sd

    if model == "micro":
        from bench.sd.micro import micro_sd_dir

        folder, px = micro_sd_dir(cache), 16
    else:
        from bench.assets.concepts import ConceptAssets
        from bench.tasks import get_task

        task = get_task("sd-digits")
        folder, px = ConceptAssets(task, task.profile("fast"), device, cache).model_folder()[0], 16
    p = load_sd(folder, device, strict_v1=False)
    m = SDModel(p.unet.to(device, dtype).eval(), p.vae.to(device, dtype).eval(), None, None, SCHED,
                p.scaling_factor, p.vae_scale_factor, device)
    return m, px, int(p.unet.config.cross_attention_dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["micro", "sd-digits", "sd-v1"], default="micro")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--batch", default="16")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=0, help="also time a full-UNet Adam step at this batch")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args()
    from bench.core.cache import default_cache_root

    device = torch.device(a.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    torch.manual_seed(0)
    m, px, dim = build(a.model, device, dtype, Path(a.cache) if a.cache else default_cache_root())
    text = RandomText(dim, device)
    n_params = sum(p.numel() for p in m.unet.parameters())
    results = {"model": a.model, "device": str(device), "dtype": a.dtype, "px": px, "steps": a.steps,
               "guidance_s": a.guidance, "unet_params": n_params, "sampling": []}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{a.model} UNet {n_params / 1e6:.2f}M params, {px} px, DDIM {a.steps} steps, s {a.guidance}, "
          f"{a.dtype}, {name} ({torch.get_num_threads()} threads)")
    for b in (int(v) for v in a.batch.split(",")):
        e_c, e_u = text(["x"] * b).to(dtype), text([""] * b).to(dtype)

        def run(b=b, e_c=e_c, e_u=e_u):
            z = torch.randn((b, *m.latent_shape(px)), device=device, dtype=dtype)
            with torch.inference_mode():
                z = ddim_sample(m, m.unet, z, e_c, e_u, a.guidance, a.steps)
                m.vae.decode((z / m.scaling_factor).to(dtype))

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = timed(run, device, a.reps, warm=1)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        results["sampling"].append({"batch": b, "seconds": sec, "images_per_s": b / sec, "peak_mb": peak})
        print(f"  batch {b:3d}: {b / sec:8.2f} images/s ({sec:.2f} s per batch; peak {peak:.0f} MiB)")
    if a.train_batch:
        unet = m.unet.float().train()
        opt = torch.optim.Adam(unet.parameters(), lr=1e-5)
        z = torch.randn((a.train_batch, *m.latent_shape(px)), device=device)
        e = text(["x"] * a.train_batch)
        t = torch.randint(0, 1000, (a.train_batch,), device=device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = unet(z, t, encoder_hidden_states=e).sample.float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        results["train_step_s"] = timed(step, device, a.reps, warm=1)
        print(f"  full-UNet Adam step at batch {a.train_batch}: {results['train_step_s']:.3f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
