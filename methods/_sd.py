"""Shared pieces of the concept (Stable Diffusion) variants: the SalUn/RL relabel loop, SalUn's saliency
mask, and the per-task defaults of sd-concepts spec §3. Losses are SD's element means throughout."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# task -> defaults that differ from the object (Imagenette) reference (spec §3.2, §3.3)
NUDITY_LIKE = ("sd-nudity", "sd-style", "sd-celebrity")  # nudity hyperparameters (style/celebrity: reconstruction)
PROFILES = ("smoke", "fast", "paper")


def per_task(values: dict[str, dict], profiles=PROFILES) -> dict[str, dict]:
    """``{"sd-nudity": {...}}`` -> presets keyed ``"sd-nudity:<profile>"`` for every profile."""
    return {f"{task}:{p}": v for task, v in values.items() for p in profiles}


def merge_presets(*dicts: dict[str, dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = {**out.get(k, {}), **v}
    return out


@dataclass(frozen=True)
class RelabelConfig:
    """SalUn-SD / RL-SD stage B (Reference ``random_label.py``, ``nsfw_removal.py``): object defaults."""

    iters: int = 600  # 5 epochs x ceil(|D_f| / 8) in the reference; fixed here whatever D_f's size
    lr: float = 1e-5
    batch: int = 8
    alpha: float = 0.5  # README command (argparse default 0.1); nudity 0.1
    forget_batch: str = "shuffled"  # "first": the reference's unshuffled next(iter(loader)) quirk


@dataclass(frozen=True)
class SaliencyConfig(RelabelConfig):
    mask_ratio: float = 0.5
    mask_w: float = 7.5  # "(1+w)" form: s = 8.5
    mask_images: int = 0  # images of D_f in the one mask pass (0: all)


def relabel_loop(ctx, cfg: RelabelConfig, mask: dict[str, torch.Tensor] | None = None):
    """L = mean((ε_θ(z_t, t, e(c_f)) − sg ε_θ(z_t, t, e(c_cover)))²) + α · L_ldm(D_r); full UNet, Adam, no
    clipping; the mask (SalUn) multiplies the gradients after backward()."""
    unet = ctx.unet()
    params = ctx.param_set(unet, "full")
    opt = ctx.optimizer(params, lr=cfg.lr)
    forget = ctx.forget_batches(cfg.batch, first=cfg.forget_batch == "first")
    remain = ctx.remain_batches(cfg.batch)
    named = dict(unet.named_parameters())
    masked = [(named[n], m) for n, m in (mask or {}).items()]
    for _ in ctx.steps(cfg.iters):
        z_f, _p, _e = next(forget)
        z_r, _pr, e_r = next(remain)
        n = z_f.shape[0]
        e_f, e_cov = ctx.text(ctx.prompts.forget, n), ctx.text(ctx.prompts.cover, n)
        t, eps = ctx.timesteps(n), torch.randn_like(z_f)
        zt = ctx.q_sample(z_f, t, eps)  # one latent for both branches (the reference encodes twice)
        with torch.no_grad():
            tgt = ctx.eps(unet, zt, t, e_cov)
        loss_f = (ctx.eps(unet, zt, t, e_f) - tgt).pow(2).mean()
        loss_r = ctx.ldm_loss(unet, z_r, e_r)
        loss = loss_f + cfg.alpha * loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p, m in masked:
            if p.grad is not None:
                p.grad.mul_(m)
        opt.step()
        ctx.log(loss_f=loss_f, loss_r=loss_r)
    return ctx.sampler(unet)


def saliency_mask(ctx, cfg: SaliencyConfig) -> dict[str, torch.Tensor]:
    """SalUn stage A (Reference ``generate_mask.py``): one pass over D_f (batch 8, file order) accumulating the
    signed gradient of −mean((ε − ê)²) with ê the "(1+w)"-guided prediction; keep the largest ``mask_ratio``
    of |G| over all UNet tensors (one global threshold)."""
    unet = ctx.unet(trainable=False)
    for p in unet.parameters():
        p.requires_grad_(True)
    grads = {n: torch.zeros_like(p) for n, p in unet.named_parameters()}
    n_img = len(ctx.data.forget_images) if cfg.mask_images <= 0 else min(cfg.mask_images, len(ctx.data.forget_images))
    for s in range(0, n_img, cfg.batch):
        x = ctx.data.forget_images[s:min(s + cfg.batch, n_img)].to(ctx.device)
        z0 = ctx.latents(x)
        n = z0.shape[0]
        t, eps = ctx.timesteps(n), torch.randn_like(z0)
        zt = ctx.q_sample(z0, t, eps)
        e_c, e_u = ctx.text(ctx.prompts.forget, n), ctx.text("", n)
        guided = (1 + cfg.mask_w) * ctx.eps(unet, zt, t, e_c) - cfg.mask_w * ctx.eps(unet, zt, t, e_u)
        loss = -(eps - guided).pow(2).mean()
        unet.zero_grad(set_to_none=True)
        loss.backward()
        for name, p in unet.named_parameters():
            if p.grad is not None:
                grads[name] += p.grad
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    k = max(1, int(round(cfg.mask_ratio * flat.numel())))
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    mask = {n: (g.abs() >= threshold).float() for n, g in grads.items()}
    kept = sum(float(m.sum()) for m in mask.values())
    ctx.record(mask_fraction=kept / flat.numel(), mask_images=n_img)
    return mask


class NeedsOneStepSD:
    """Mixin for SFD/PECKER on concept tasks (spec §3.5): their SD variants distil a one-step SD v1.5
    generator (SiD-LSG). Without the user's generator (``--one-step-generator``) the cell is written as
    skipped with the reason; the SD distillation loop itself is not implemented yet, so with a generator
    the cell is skipped too, saying so."""

    task_kinds = frozenset({"class", "concept"})

    @dataclass(frozen=True)
    class ConceptConfig:
        iters: int = 12_500  # 100 kimg at global batch 8
        lr_generator: float = 1e-6
        lr_fake: float = 3e-6
        batch: int = 8
        guidance: float = 4.5

    concept_presets = {"smoke": {"iters": 4}}

    def unlearn_concept(self, ctx):
        if not ctx.one_step_generator:
            ctx.skip("needs a one-step SD v1.5 generator (SiD-LSG); pass --one-step-generator")
        ctx.skip(f"the {self.name}-SD distillation loop is not implemented in this version of the harness")
