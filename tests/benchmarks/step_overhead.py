"""The harness's cost per step at the reference CIFAR-10 U-Net, against bare PyTorch in the same run.

1. **Sampling**: one guided step of the harness's sampler (``Diffusion.sample`` for one step at the profile's
   guidance weight: both passes as one batch, the DDIM update, the noise draw) at batch 8 and 64, against one
   bare forward of the 2B images the step evaluates.
2. **Unlearning**: one SalUn iteration through the harness (``methods._relabel.relabel_loop`` in a real
   ``UnlearnContext``: remain loss, relabel forget loss with its gradient-free target, clip, mask, Adam, the
   context's counting and logging) against
   - a bare forward+backward of the same 16 images (8 forget + 8 remain), no optimizer, and the same with the
     gradient-free forward of the 8 relabel targets: the floor of any implementation of these losses;
   - a loop of the authors' implementation's shape: three forwards, the relabel target computed under autograd
     and detached, an int64 mask multiplied into every gradient, then clip and Adam.

Weights and images are random (the timing depends on shapes only), so nothing is downloaded or trained.
Medians over ``--reps`` after two warm-up runs. Run alone: threads of another torch process distort it.

    python tests/benchmarks/step_overhead.py --threads 1 --reps 5
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from throughput import timed  # noqa: E402  (this script's folder)

from bench.assets.classes import Assets  # noqa: E402
from bench.context import UnlearnContext  # noqa: E402
from bench.core.measure import Counts, Stopwatch  # noqa: E402
from bench.engine.plugins import load_all  # noqa: E402
from bench.method import METHODS, resolve_config  # noqa: E402
from bench.models.factory import build_unet  # noqa: E402
from bench.tasks import Splits  # noqa: E402
from bench.tasks.cifar10 import CIFAR10  # noqa: E402
from bench.tasks.images import ImageTask  # noqa: E402
from methods._relabel import relabel_loop  # noqa: E402

PER_CLASS = 16  # random images per class: enough for the forget and remain streams


class ShapesOnly(ImageTask):
    """CIFAR-10's shapes, model and profiles with random images in place of the data."""

    def load_splits(self, data_root=None, cache_root=None) -> Splits:
        g = torch.Generator().manual_seed(0)
        y = torch.arange(self.num_classes).repeat_interleave(PER_CLASS)
        x = torch.rand((len(y), self.channels, self.image_size, self.image_size), generator=g) * 2 - 1
        return Splits(x, y, x[: self.num_classes], y[: self.num_classes], {"data_source": "random (shapes only)"})


def median_time(fn, reps: int) -> float:
    return timed(fn, torch.device("cpu"), reps)


def sampling(assets: Assets, w: float, batch: int, reps: int) -> tuple[float, float]:
    """(harness step, bare forward of 2B) in seconds."""
    net = assets.base("raw").eval()
    d = assets.diffusion
    shape = (batch, *assets.image_shape)
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)

    def step():
        d.sample(net, labels, steps=1, w=w, eta=0.0, noise=lambda _k: torch.randn(shape, generator=g))

    x2 = torch.randn((2 * batch, *assets.image_shape))
    t2 = torch.full((2 * batch,), 999.0)
    c2 = torch.cat([labels, torch.full_like(labels, net.null_class)])

    def bare():
        with torch.no_grad():
            net(x2, t2, c2)

    return median_time(step, reps), median_time(bare, reps)


def salun_harness(assets: Assets, iters: int, batch: int) -> float:
    """Seconds per iteration of the harness's masked, clipped relabel loop (``iters`` iterations timed)."""
    cls = METHODS.get("salun")
    counts = Counts()
    counts.enabled = True
    ctx = UnlearnContext(assets.family(0, 0), 0, counts, Stopwatch(assets.device), probe_fn=None, n_probes=0,
                         progress=False)
    net = ctx.base_model()
    mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) < 0.5
            for n, p in net.named_parameters()}
    try:
        cfg = resolve_config(cls, assets.task, assets.profile, {"batch": batch}, iters=2)
        relabel_loop(ctx, net, cfg, mask)  # warm-up
        cfg = dataclasses.replace(cfg, iters=iters)
        t = time.perf_counter()
        relabel_loop(ctx, net, cfg, mask)
        return (time.perf_counter() - t) / iters
    finally:
        ctx.close()


def bare_fwd_bwd(assets: Assets, batch: int, reps: int, target: bool = False) -> float:
    """A forward+backward of 2 x ``batch`` images; with ``target`` also a gradient-free forward of ``batch``
    (the relabel target no implementation of these losses can skip)."""
    net = assets.base("raw").train()
    x = torch.randn((2 * batch, *assets.image_shape))
    t = torch.randint(0, 1000, (2 * batch,)).float()
    c = torch.randint(0, 10, (2 * batch,))

    def once():
        net.zero_grad(set_to_none=True)
        if target:
            with torch.no_grad():
                net(x[:batch], t[:batch], c[:batch])
        net(x, t, c).pow(2).mean().backward()

    return median_time(once, reps)


def reference_shaped(assets: Assets, batch: int, reps: int, clip: float = 1.0, alpha: float = 1.0) -> float:
    """One iteration shaped like the authors' loop (three forwards, target under autograd, int64 mask)."""
    net = assets.base("raw").train()
    d = assets.diffusion
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    mask = {n: (torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) < 0.5).long()
            for n, p in net.named_parameters()}
    shape = (batch, *assets.image_shape)
    xf, xr = torch.randn(shape), torch.randn(shape)
    cf, cr = torch.zeros(batch, dtype=torch.long), torch.randint(1, 10, (batch,))

    def once():
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn(shape)
        xt = d.q_sample(xf, t, noise)
        out = net(xt, t.float(), cf)
        target = net(xt, t.float(), torch.ones_like(cf)).detach()  # the graph is built, then dropped
        loss_f = (out - target).pow(2).mean()
        loss_r = d.simple_loss(net, xr, cr)
        loss = loss_f + alpha * loss_r
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        for name, p in net.named_parameters():
            if p.grad is not None:
                p.grad *= mask[name]
        opt.step()

    return median_time(once, reps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", default="8,64", help="sampler batches")
    ap.add_argument("--unlearn-batch", type=int, default=8, help="forget and remain images per iteration, each")
    ap.add_argument("--parts", default="sampling,unlearning", help="which of sampling, unlearning to time")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    load_all()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = ShapesOnly(**{f.name: getattr(CIFAR10, f.name) for f in dataclasses.fields(CIFAR10) if f.init})
    profile = task.profile("fast")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "random.pt"
        torch.save(build_unet(task.arch, profile.unet_config or task.unet_config, task.num_classes).state_dict(),
                   weights)
        assets = Assets(task, profile, torch.device("cpu"), cache_root=Path(tmp) / "cache", base_model=weights)
        params = sum(p.numel() for p in assets.base("raw").parameters())
        print(f"# reference CIFAR-10 U-Net ({params / 1e6:.1f}M parameters), cpu, {torch.get_num_threads()} "
              f"thread(s), fp32, median of {args.reps}")
        w = profile.guidance
        for b in (int(s) for s in args.batches.split(",")) if "sampling" in parts else ():
            step, bare = sampling(assets, w, b, args.reps)
            print(f"sampler step, batch {b} (w={w}: {2 * b} images per forward): harness {step:.3f} s, bare "
                  f"forward {bare:.3f} s, harness/bare {step / bare:.3f}", flush=True)
        if "unlearning" not in parts:
            return 0
        ub = args.unlearn_batch
        floor = bare_fwd_bwd(assets, ub, args.reps)
        floor_t = bare_fwd_bwd(assets, ub, args.reps, target=True)
        ref = reference_shaped(assets, ub, args.reps)
        ours = salun_harness(assets, args.reps, ub)
        print(f"SalUn iteration, {ub} forget + {ub} remain: harness {ours:.3f} s, reference-shaped loop {ref:.3f} s "
              f"(reference/harness {ref / ours:.2f}x), bare forward+backward of {2 * ub} images {floor:.3f} s "
              f"(harness/bare {ours / floor:.2f}); with the gradient-free target forward of {ub} {floor_t:.3f} s "
              f"(harness/that {ours / floor_t:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
