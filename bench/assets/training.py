"""Training loops the harness owns: the diffusion recipe (Original and Retrain) and the classifier."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.core.precision import Precision
from bench.models.diffusion import Diffusion
from bench.tasks import ClassifierRecipe, Recipe


def make_optimizer(params: Iterable[Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    params = list(params)
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    # one fused kernel for all parameters on a GPU instead of a launch per tensor
    fused = bool(params) and params[0].is_cuda
    return cls(params, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=recipe.weight_decay,
               fused=fused or None)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``constant``: none (the reference recipe); ``cosine``: ``lr * (1 + cos(pi * k / steps)) / 2``.

    Small tasks train for a few thousand steps, where a constant learning rate leaves the raw weights
    noisy: any later fine-tuning at a lower rate then improves quality, and the Original stops being
    the quality anchor. Decaying to zero ends the run converged."""
    if recipe.lr_schedule == "constant":
        return None
    if recipe.lr_schedule == "cosine":
        total = max(1, recipe.steps)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total)))
    raise ValueError(f"unknown lr_schedule {recipe.lr_schedule!r}; choose constant or cosine")


def make_ema(net: nn.Module, recipe: Recipe) -> EMAModel:
    # diffusers' EMA warm-up (decay = min(mu, (1+n)/(10+n))) keeps the shadow meaningful on short runs
    return EMAModel(net.parameters(), decay=recipe.ema, foreach=True)


def diffusion_step(net: nn.Module, opt: torch.optim.Optimizer, diffusion: Diffusion, x: Tensor, y: Tensor,
                   recipe: Recipe, ema: EMAModel | None = None, params: list[Tensor] | None = None) -> Tensor:
    """One step of the pretraining recipe: L_simple with label dropout, clip_norm, optimizer, EMA.
    ``net`` may be a compiled wrapper; ``params`` are the real parameters. Returns the loss on the
    device (reading it would synchronise every step)."""
    params = list(net.parameters()) if params is None else params
    loss = diffusion.simple_loss(net, x, y, p_drop=recipe.p_drop)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, recipe.clip, foreach=True)
    opt.step()
    if ema is not None:
        ema.step(params)
    return loss.detach()


def train_diffusion(net: nn.Module, diffusion: Diffusion, batches: Iterator[tuple[Tensor, Tensor]],
                    recipe: Recipe, desc: str, precision: Precision | None = None,
                    start: int = 0, opt_state: dict | None = None, ema_state: dict | None = None,
                    on_checkpoint=None, checkpoint_every: int = 0) -> tuple[nn.Module, EMAModel]:
    """Pretrain ``net`` in place; returns it and its EMA shadow.

    ``start``/``opt_state``/``ema_state`` resume a run; ``on_checkpoint(step, net, opt, ema)`` is
    called every ``checkpoint_every`` steps. The loss is read back only when the bar refreshes."""
    precision = precision or Precision()
    device = next(net.parameters()).device
    net = precision.prepare(net)
    net.train()
    params = list(net.parameters())
    opt = make_optimizer(params, recipe)
    sched = make_scheduler(opt, recipe)
    ema = make_ema(net, recipe)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if ema_state is not None:
        ema.load_state_dict(ema_state)
    if sched is not None:
        for _ in range(start):
            sched.step()
    run = torch.compile(net) if precision.compile else net
    bar = tqdm(range(start, recipe.steps), desc=desc, leave=False, dynamic_ncols=True, initial=start,
               total=recipe.steps)
    last = None
    for k in bar:
        x, y = next(batches)
        with precision.autocast(device):
            last = diffusion_step(run, opt, diffusion, x, y, recipe, ema, params)
        if sched is not None:
            sched.step()
        if k % 50 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(last):.1f}", refresh=False)
        if on_checkpoint is not None and checkpoint_every and (k + 1) % checkpoint_every == 0 and k + 1 < recipe.steps:
            on_checkpoint(k + 1, net, opt, ema)
    net.eval()
    return net, ema


def train_classifier(net: nn.Module, x: Tensor, y: Tensor, recipe: ClassifierRecipe, seed: int,
                     device: torch.device, precision: Precision | None = None) -> nn.Module:
    """Cross-entropy training with one-pixel random shifts (samples are never perfectly centred) and,
    for natural images, random horizontal flips."""
    precision = precision or Precision()
    g = torch.Generator().manual_seed(seed)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = (len(x) + recipe.batch - 1) // recipe.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    x, y = x.to(device), y.to(device)
    for _ in tqdm(range(recipe.epochs), desc="classifier", leave=False, dynamic_ncols=True):
        perm = torch.randperm(len(x), generator=g).to(device)
        for s in range(0, len(x), recipe.batch):
            idx = perm[s:s + recipe.batch]
            xb = _random_shift(x[idx], g)
            if recipe.flip:
                flip = (torch.rand(len(idx), generator=g) < 0.5).to(device)
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            with precision.autocast(device):
                loss = F.cross_entropy(net(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def _random_shift(x: Tensor, g: torch.Generator) -> Tensor:
    dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.inference_mode()
def predict(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """Class probabilities of images in model space (fp32 logits)."""
    dev = next(net.parameters()).device
    return torch.cat([F.softmax(net(x[s:s + batch].to(dev)).float(), dim=1).cpu() for s in range(0, len(x), batch)])
