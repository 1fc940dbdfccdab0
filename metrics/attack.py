"""Embedding attack on class tasks: is the forgotten class still reachable through the class-conditioning
input, once the label is replaced by a vector chosen by an attacker?

On a COPY of the evaluated network, every weight is frozen except the forget class's row of the class
embedding table (the label lookup of the U-Net, the reference U-Net or the DiT), which starts where the
method left it. It is optimised with Adam to minimise ``L_simple`` on real forget-class training images
conditioned on the forget label (no label dropout), the diffusion analogue of textual inversion ("When Are
Concepts Erased?", arXiv 2505.17013). Forget-class samples are then drawn with the profile's sampler
(steps, guidance, eta) before and after the optimisation, with the same noise:

* ``ua_embed_attack``: UA after the attack (share of samples NOT read as the forget class); higher means
  the class stayed gone;
* ``asr_embed_attack``: the attack success rate, 1 - ``ua_embed_attack``;
* ``ua_embed_before``: UA of the same noise before the attack (the pair is the probe's own pre/post).

Budget per profile (``schedule``): optimisation steps, Adam learning rate, attack images (the first N of the
forget class in the training split, the whole set in every step); ``probe_n`` samples. The optimisation and
the sampling use seeds derived from the cell seed inside a forked RNG. The row records the budget, the
denoising loss before and after and the probe's time. A one-step generator (SFD, PECKER) has no denoising
loss to invert (its network maps noise to an image in one step): NaN with a note. A network without a class
embedding table of ``num_classes`` (+1) rows gets NaN with a note too. Retrain never saw the class: what the
attack recovers there measures the attack, not the method.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bench.metric import EvalContext, Metric, register_metric
from bench.models.generators import DiffusionSampler, eval_mode
from bench.models.nets import clone_without_hooks

ATTACK_SEED_OFFSET = 7_000_003


def class_table(net: nn.Module, num_classes: int) -> nn.Embedding | None:
    """The label-embedding table of a class-conditional network: the first ``nn.Embedding`` with
    ``num_classes`` rows (a separate null vector) or ``num_classes + 1`` rows (the null class last)."""
    for m in net.modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings in (num_classes, num_classes + 1):
            return m
    return None


@register_metric("embedding_attack")
class EmbeddingAttack(Metric):
    directions = {"ua_embed_attack": True, "asr_embed_attack": False, "ua_embed_before": None}
    definition = ("UA of forget-class samples after optimising the forget class's embedding row (all other "
                  "weights frozen) to minimise L_simple on real forget images; asr = 1 - UA; ua_embed_before "
                  "= the same noise before the attack; budget per profile in embed_attack_steps/_lr/_images")
    default = False

    #: per profile name: (Adam steps, learning rate, attack images)
    schedule: dict[str, tuple[int, float, int]] = {"smoke": (10, 5e-2, 8), "fast": (100, 5e-2, 32)}
    default_schedule: tuple[int, float, int] = (300, 5e-2, 64)

    def compute(self, ev: EvalContext) -> dict[str, Any]:
        steps, lr, n_images = self.schedule.get(ev.assets.profile.name, self.default_schedule)
        base = {"embed_attack_steps": steps, "embed_attack_lr": lr}
        gen = ev.generator
        if not isinstance(gen, DiffusionSampler):
            return {**self.empty(), **base, "embed_attack_note": "not applicable: one-step generator (no "
                    "denoising loss to invert)"}
        net = clone_without_hooks(gen.net)  # the driver's counting hooks stay on the evaluated network
        table = class_table(net, ev.assets.task.num_classes)
        if table is None:
            return {**self.empty(), **base, "embed_attack_note": "not applicable: no class embedding table"}
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[ev.device] if ev.device.type == "cuda" else []):
            out = self._attack(ev, gen, net, table, steps, lr, n_images)
        return {**out, **base, "embed_attack_s": time.perf_counter() - t0, "embed_attack_note": ""}

    def _attack(self, ev, gen, net, table, steps, lr, n_images) -> dict[str, Any]:
        p, f = ev.assets.profile, ev.forget_class
        s = ev.assets.splits
        x0 = s.train_x[s.train_y == f][:n_images].to(ev.device)
        sampler = DiffusionSampler(net, gen.diffusion, p.sampler_steps, p.guidance, p.eta, gen.image_shape,
                                   gen.weights)
        labels = torch.full((p.probe_n,), f, dtype=torch.long)
        seed = ev.seed + ATTACK_SEED_OFFSET
        before = 1.0 - ev.forget_accuracy(sampler.sample(labels, seed=seed), show_as="ua_embed_before")
        loss0, loss = invert_class_row(net, table, gen.diffusion, x0, f, steps, lr, seed)
        after = 1.0 - ev.forget_accuracy(sampler.sample(labels, seed=seed), show_as="ua_embed_attack")
        return {"ua_embed_attack": after, "asr_embed_attack": 1.0 - after, "ua_embed_before": before,
                "embed_attack_images": len(x0), "embed_attack_n": p.probe_n,
                "embed_attack_loss0": loss0, "embed_attack_loss": loss}


def invert_class_row(net: nn.Module, table: nn.Embedding, diffusion, x0: torch.Tensor, label: int, steps: int,
                     lr: float, seed: int) -> tuple[float, float]:
    """Optimise row ``label`` of ``table`` (in place; every other weight of ``net`` frozen) with Adam to
    minimise ``L_simple`` of ``net`` on ``x0`` conditioned on ``label``; returns the loss before and after on
    one fixed draw of timesteps and noise."""
    net.requires_grad_(False)
    table.weight.requires_grad_(True)
    keep = torch.zeros_like(table.weight)
    keep[label] = 1.0
    y = torch.full((len(x0),), label, dtype=torch.long, device=x0.device)

    @torch.no_grad()
    def fixed_loss() -> float:
        return float(diffusion.simple_loss(net, x0, y, generator=torch.Generator().manual_seed(seed)))

    torch.manual_seed(seed)
    opt = torch.optim.Adam([table.weight], lr=lr)
    with eval_mode(net):  # the frozen network keeps its inference behaviour (no dropout)
        loss0 = fixed_loss()
        for _ in range(steps):
            loss = diffusion.simple_loss(net, x0, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            table.weight.grad.mul_(keep)  # Adam leaves a row whose gradient is always zero where it is
            opt.step()
        loss1 = fixed_loss()
    table.weight.requires_grad_(False)
    return loss0, loss1
