"""SFD and PECKER on text-to-image (concept) tasks: the pieces the SD recipe adds to the class-task loop of
:mod:`methods._distill` (docs/methods.md, "SFD and PECKER on concept tasks").

* :class:`LatentSchedule` -- the task's noise schedule on latents, with classifier-free guidance (SD's "s"
  form, the empty prompt as ∅) on the two score networks; the one-step generator itself is unguided.
* :class:`PromptConditions` -- conditioning as text embeddings: retain prompts drawn from the task's
  remaining captions, the forget prompt, the override prompt, and the fake score's caption dropout.
* :func:`load_generator` -- ``--one-step-generator``: start G from a user's distilled UNet folder.

The cell is evaluated by the harness's :class:`bench.sd.sampler.OneStepPromptSampler` (one UNet call per image at
``t_init``, decoded by the VAE), the same map as the generator here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError

#: the reference drops the fake score's prompt to ∅ with this probability whenever its guidance is not 1
FAKE_CAPTION_DROPOUT = 0.1


class LatentSchedule:
    """What :mod:`methods._distill` needs of a schedule (``q_sample``, ``x0_from_eps``, ``uniform_t``,
    ``eps``, ``simple_loss``, ``alphas_cumprod``), on latents and text embeddings.

    ``eps`` is the score networks' prediction, guided as ``eps_u + s (eps_c - eps_u)`` with ``s = guidance``
    (the reference guides the teacher, the fake score in training and the fake score in the generator loss
    with the same 4.5); :meth:`generator_eps` is the generator's own, unguided call. ᾱ is read off the task's
    forward process (``q_sample`` of ones with zero noise is √ᾱ_t), so any schedule the task uses is the
    one distilled.
    """

    def __init__(self, ctx, guidance: float) -> None:
        self.ctx = ctx
        self.guidance = float(guidance)
        self.device = ctx.device
        probe_t = torch.arange(1000, device=ctx.device)
        ones = torch.ones(len(probe_t), 1, device=ctx.device)
        self.alphas_cumprod = ctx.q_sample(ones, probe_t, torch.zeros_like(ones)).squeeze(1).pow(2)
        self.T = len(self.alphas_cumprod)

    def _ab(self, t: Tensor, ndim: int) -> Tensor:
        return self.alphas_cumprod[t.long()].view(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return self.ctx.q_sample(x0, t, noise)

    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        ab = self._ab(t, x_t.ndim)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def uniform_t(self, batch: int, low: int, high: int) -> Tensor:
        return torch.randint(low, high, (batch,), device=self.device)

    def generator_eps(self, net: nn.Module, z: Tensor, t: Tensor, e: Tensor, p_drop: float = 0.0) -> Tensor:
        return self.ctx.eps(net, z, t, e, p_drop)

    def eps(self, net: nn.Module, z: Tensor, t: Tensor, e: Tensor, p_drop: float = 0.0) -> Tensor:
        if self.guidance == 1.0:
            return self.ctx.eps(net, z, t, e, p_drop)
        return self.ctx.guided_eps(net, z, t, e, self.guidance - 1.0)

    def simple_loss(self, net: nn.Module, x0: Tensor, c: Tensor, p_drop: float = 0.0, t: Tensor | None = None,
                    noise: Tensor | None = None, guided: bool = True) -> Tensor:
        """The reference's fake-score loss: squared error of the guided prediction, SUM over latent
        elements, MEAN over the batch (``sum() / batch``), the same reduction as the class tasks' L_simple;
        ``guided=False`` is the generator's own unguided ε-MSE (PECKER's saliency loss)."""
        t = self.uniform_t(x0.shape[0], 0, self.T) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        eps = self.eps if guided else self.generator_eps
        pred = eps(net, self.q_sample(x0, t, noise), t, c)
        return (noise - pred).pow(2).flatten(1).sum(1).mean()


class PromptConditions:
    """Text conditioning of the distillation: ``remain()`` yields batches of retain-prompt embeddings (the
    task's remaining captions, shuffled and cycled), ``forget(n)`` / ``override(n)`` the forget and override
    prompts (the override is the task's override prompt, else its cover prompt), ``drop(e)`` the fake
    score's caption dropout."""

    def __init__(self, ctx, batch: int, guidance: float, seed: int = 0) -> None:
        self.ctx = ctx
        prompts = ctx.prompts
        self.remain_prompts = list(prompts.remain)
        self.override_prompt = prompts.override or prompts.cover
        self.batch = batch
        self.p_drop = FAKE_CAPTION_DROPOUT if guidance != 1.0 else 0.0
        self._g = torch.Generator().manual_seed(seed)

    def remain(self) -> Iterator[Tensor]:
        k = len(self.remain_prompts)
        while True:
            order = torch.randperm(k, generator=self._g).tolist()
            reps = -(-self.batch // k)
            picks = [self.remain_prompts[i] for i in (order * reps)[:self.batch]]
            yield self.ctx.text(picks)

    def forget(self, n: int) -> Tensor:
        return self.ctx.cond("forget", n)

    def override(self, n: int) -> Tensor:
        return self.ctx.text(self.override_prompt, n)

    def drop(self, e: Tensor) -> Tensor:
        if not self.p_drop:
            return e
        keep = torch.rand(e.shape[0], device=e.device) >= self.p_drop
        return torch.where(keep.view(-1, 1, 1), e, self.ctx.cond("null", e.shape[0]))


def load_generator(gen: nn.Module, folder: str | Path) -> None:
    """Copy a user's one-step generator (a diffusers ``UNet2DConditionModel`` folder, e.g. a converted SiD-LSG
    checkpoint) into ``gen``; the shapes must match the task's base UNet."""
    from diffusers import UNet2DConditionModel

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise BenchError(f"--one-step-generator {path}: expected a diffusers UNet folder (config.json and weights)")
    try:
        user = UNet2DConditionModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BenchError(f"--one-step-generator {path}: cannot load a UNet ({exc})") from None
    mine, theirs = gen.state_dict(), user.state_dict()
    bad = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if bad:
        raise BenchError(f"--one-step-generator {path}: does not match the task's UNet ({len(bad)} tensors differ, "
                         f"e.g. {bad[0]})")
    gen.load_state_dict({k: theirs[k] for k in mine})
