"""Cost of one SFD-SD iteration at SD v1.x size, from measured UNet passes of a full-size random UNet.

An SFD/PECKER iteration on a concept task calls full UNets a fixed number of times per image (the harness counts
them in every row: ``forward_images`` and backward passes). This script times one forward (no graph) and one
forward + backward at batch ``--batch`` of a randomly initialised SD v1.x UNet (diffusers' default
``UNet2DConditionModel`` config: 860M parameters, 4x64x64 latents, 77x768 text), then composes the reference
recipe's iteration (batch 8, guidance 4.5 on the teacher and the fake score, so those calls see 2x the batch):

* ψ step: G on retain and forget prompts without graph (2B image-forwards); the guided fake score on both,
  with backward (4B);
* θ step: G on both with graph (2B), teacher and fake score guided on both with graph through their inputs
  (8B), backward through all of it.

Usage: ``python tests/benchmarks/sfd_sd_cost.py [--batch 1] [--device cpu]``. Needs ~12 GB of memory at batch 1
on a CPU. It prints seconds per image-pass and the composed seconds per iteration, and the 12,500-iteration
(100 kimg) budget at that rate.
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, reps: int, device: str) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from diffusers import UNet2DConditionModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(args.device)
    n_params = sum(p.numel() for p in unet.parameters())
    b = args.batch
    z = torch.randn(b, 4, 64, 64, device=args.device)
    t = torch.full((b,), 500, device=args.device)
    e = torch.randn(b, 77, 768, device=args.device)

    def forward():
        with torch.no_grad():
            unet(z, t, encoder_hidden_states=e)

    def forward_backward():
        unet.zero_grad(set_to_none=True)
        unet(z.requires_grad_(True), t, encoder_hidden_states=e).sample.square().mean().backward()

    f = timed(forward, args.reps, args.device) / b
    fb = timed(forward_backward, args.reps, args.device) / b
    batch = 8  # the reference recipe
    no_grad_images, graph_images = 2 * batch, 4 * batch + 2 * batch + 8 * batch
    per_iter = no_grad_images * f + graph_images * fb
    print(f"UNet parameters: {n_params / 1e6:.1f}M; device {args.device}; {torch.get_num_threads()} threads")
    print(f"per image: forward {f:.2f} s, forward+backward {fb:.2f} s (batch {b})")
    print(f"SFD-SD iteration at batch 8 (16 no-graph + 112 graph image passes): {per_iter:.0f} s")
    print(f"12,500 iterations (100 kimg): {per_iter * 12_500 / 3600:.0f} h")


if __name__ == "__main__":
    main()
