"""Training loops the harness owns: the diffusion recipe (Original and Retrain) and the classifier."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.diffusion import Diffusion
from bench.tasks import ClassifierRecipe, Recipe


def make_optimizer(params: Iterable[Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=recipe.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``constant``: none (the reference recipe); ``cosine``: ``lr * (1 + cos(pi * k / steps)) / 2``.

    Small tasks train for a few thousand steps, where a constant learning rate leaves the raw weights
    noisy: any later fine-tuning at a lower rate then improves quality, and the Original stops being
    the quality anchor. Decaying to zero ends the run converged."""
    if recipe.lr_schedule == "constant":
        return None
    if recipe.lr_schedule == "cosine":
        import math

        total = max(1, recipe.steps)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total)))
    raise ValueError(f"unknown lr_schedule {recipe.lr_schedule!r}; choose constant or cosine")


def make_ema(net: nn.Module, recipe: Recipe) -> EMAModel:
    # diffusers' EMA warm-up (decay = min(mu, (1+n)/(10+n))) keeps the shadow meaningful on short runs
    return EMAModel(net.parameters(), decay=recipe.ema)


def diffusion_step(net: nn.Module, opt: torch.optim.Optimizer, diffusion: Diffusion, x: Tensor, y: Tensor,
                   recipe: Recipe, ema: EMAModel | None = None) -> float:
    """One step of the pretraining recipe: L_simple with label dropout, clip_norm, optimizer, EMA."""
    loss = diffusion.simple_loss(net, x, y, p_drop=recipe.p_drop)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip)
    opt.step()
    if ema is not None:
        ema.step(net.parameters())
    return float(loss.detach())


def train_diffusion(net: nn.Module, diffusion: Diffusion, batches: Iterator[tuple[Tensor, Tensor]],
                    recipe: Recipe, desc: str) -> tuple[nn.Module, EMAModel]:
    """Pretrain ``net`` in place; returns it and its EMA shadow."""
    net.train()
    opt = make_optimizer(net.parameters(), recipe)
    sched = make_scheduler(opt, recipe)
    ema = make_ema(net, recipe)
    bar = tqdm(range(recipe.steps), desc=desc, leave=False, dynamic_ncols=True)
    for _ in bar:
        x, y = next(batches)
        loss = diffusion_step(net, opt, diffusion, x, y, recipe, ema)
        if sched is not None:
            sched.step()
        bar.set_postfix(loss=f"{loss:.1f}", refresh=False)
    net.eval()
    return net, ema


def train_classifier(net: nn.Module, x: Tensor, y: Tensor, recipe: ClassifierRecipe, seed: int,
                     device: torch.device) -> nn.Module:
    """Cross-entropy training with one-pixel random shifts (samples are never perfectly centred)."""
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
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def _random_shift(x: Tensor, g: torch.Generator) -> Tensor:
    dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """Class probabilities of images in model space."""
    dev = next(net.parameters()).device
    return torch.cat([F.softmax(net(x[s:s + batch].to(dev)), dim=1).cpu() for s in range(0, len(x), batch)])
