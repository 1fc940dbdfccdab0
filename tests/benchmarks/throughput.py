"""Sampler and training throughput of a task's U-Net: eager vs compiled, fp32 vs bf16.

Prints images/s of the task's guided sampler, training iterations/s of the pretraining step, and the
achieved FLOP rate as a fraction of this device's measured dense matmul rate (bf16 on a GPU, fp32 on a
CPU). FLOPs per forward are counted by ``torch.utils.flop_counter`` on one forward pass.

    python tests/benchmarks/throughput.py --task cifar10-class --device cuda --modes fp32,bf16
    python tests/benchmarks/throughput.py --task digits-class --profile fast          # CPU, small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.assets.training import make_optimizer  # noqa: E402
from bench.core.precision import Precision  # noqa: E402
from bench.models.diffusion import Diffusion  # noqa: E402
from bench.models.factory import build_unet  # noqa: E402
from bench.tasks import get_task  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int, warm: int = 2) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after ``warm`` untimed runs."""
    for _ in range(warm):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul FLOP/s: bf16 8192^3 on a GPU, fp32 1024^3 on a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = timed(lambda: a @ b, device, reps=10, warm=3)
    return 2 * n**3 / s, f"{str(dtype).split('.')[-1]} {n}^3"


def forward_flops(net, x, t, c) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, t, c)
    return int(fc.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="cifar10-class")
    ap.add_argument("--profile", default="fast", help="the sampler steps and guidance come from this profile")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default="fp32,bf16", help="comma-separated: fp32, bf16 (each eager)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (slow to build)")
    ap.add_argument("--channels-last", choices=("auto", "both"), default="auto",
                    help="auto: channels-last on a GPU only; both: time every variant in both memory formats")
    ap.add_argument("--sample-batch", type=int, default=None, help="images per sampler batch (default: profile)")
    ap.add_argument("--train-batch", type=int, default=None, help="training batch (default: profile recipe)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    task = get_task(args.task)
    prof = task.profile(args.profile)
    shape = (task.channels, task.image_size, task.image_size)
    config = prof.unet_config or task.unet_config
    sb = args.sample_batch or min(prof.eval_batch, 512 if device.type == "cuda" else 64)
    tb = args.train_batch or prof.pretrain.batch
    peak, peak_kind = matmul_rate(device)
    diffusion = Diffusion(device=device)
    torch.manual_seed(0)
    base = build_unet(task.arch, config, task.num_classes).to(device)
    nparams = sum(p.numel() for p in base.parameters())
    w = prof.guidance
    nfe_per_step = 1 if w == 0 else 2
    x1 = torch.randn(1, *shape, device=device)
    flops_fwd = forward_flops(base.eval(), x1, torch.zeros(1, device=device), torch.zeros(1, dtype=torch.long,
                                                                                          device=device))
    print(f"# {args.task} ({task.arch}, {nparams:,} parameters) on {_device_name(device)}; "
          f"measured matmul peak {peak / 1e12:.1f} TFLOP/s ({peak_kind}); "
          f"{flops_fwd / 1e9:.2f} GFLOP per image forward; sampler {prof.sampler_steps} steps, w={w}")
    results = {"task": args.task, "arch": task.arch, "params": nparams, "device": _device_name(device),
               "matmul_peak_flops": peak, "matmul_kind": peak_kind, "gflop_per_forward": flops_fwd / 1e9,
               "sampler_steps": prof.sampler_steps, "guidance": w, "runs": []}
    formats = (False, True) if args.channels_last == "both" else (device.type == "cuda",)
    variants = [(m, c, f) for c in ((False, True) if args.compile else (False,)) for m in args.modes.split(",")
                for f in formats]
    for mode, compiled, nhwc in variants:
        prec = Precision(bf16=mode == "bf16", channels_last=nhwc, compile=compiled)
        net = prec.prepare(build_unet(task.arch, config, task.num_classes).to(device))
        run = torch.compile(net) if compiled else net
        # --- sampling: one guided sampler step on a batch ------------------------------------------------
        x = torch.randn(sb, *shape, device=device)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        c = torch.randint(0, task.num_classes, (sb,), device=device)
        t = torch.full((sb,), 500, device=device, dtype=torch.long)
        net.eval()

        def step(run=run, x=x, t=t, c=c, prec=prec):
            with torch.inference_mode(), prec.autocast(device):
                diffusion.cfg_eps(run, x, t, c, w)

        t0 = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - t0
        s_step = timed(step, device, args.reps)
        img_s = sb / (s_step * prof.sampler_steps)
        flop_rate = sb * nfe_per_step * flops_fwd / s_step
        # --- training: the pretraining step -------------------------------------------------------------
        net.train()
        opt = make_optimizer(net.parameters(), prof.pretrain)
        xb = torch.randn(tb, *shape, device=device)
        if nhwc:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = torch.randint(0, task.num_classes, (tb,), device=device)

        def train_step(run=run, xb=xb, yb=yb, prec=prec, opt=opt, net=net):
            with prec.autocast(device):
                loss = diffusion.simple_loss(run, xb, yb, p_drop=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0, foreach=True)
            opt.step()

        s_train = timed(train_step, device, args.reps)
        train_rate = 3 * tb * flops_fwd / s_train
        r = {"mode": mode, "compiled": compiled, "channels_last": nhwc, "first_call_s": first, "sample_batch": sb,
             "sampler_step_s": s_step, "images_per_s": img_s, "sample_flops": flop_rate,
             "sample_frac_of_peak": flop_rate / peak, "train_batch": tb, "train_it_s": 1 / s_train,
             "train_frac_of_peak": train_rate / peak}
        results["runs"].append(r)
        layout = "NHWC" if nhwc else "NCHW"
        print(f"{mode:5} {'compiled' if compiled else 'eager':8} {layout} sampling {img_s:10.1f} images/s "
              f"({100 * r['sample_frac_of_peak']:.1f}% of peak; step {1e3 * s_step:.1f} ms at batch {sb}; "
              f"first call {first:.1f} s) | training {1 / s_train:7.2f} it/s at batch {tb} "
              f"({100 * r['train_frac_of_peak']:.1f}% of peak)", flush=True)
        del net, run, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    raise SystemExit(main())
