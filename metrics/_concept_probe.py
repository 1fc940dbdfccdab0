"""What the recovery probes of concept tasks share (``concept_probes``, ``concept_attack``, ``concept_relearn``):
the reader that says which images show the forget concept, the budget per profile, fresh requests of the
forget prompts with seeds derived from the cell seed, DDIM from a given latent with the method's own sampler,
and the probe contract (a forked RNG, the probe's time, NaN and a note where it cannot run).

Every probe goes through the sampler the evaluator rendered with (``ConceptEvalContext.sampler``): the
method's UNet, its guidance rule (SLD's safety guidance) and its text encoder (AdvUnlearn's), so a probe
attacks what the method ships, not the base model's parts.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.assets.training import predict
from bench.metric import ConceptEvalContext, Metric
from bench.models.generators import eval_mode
from bench.sd.digits import to_digits_space
from bench.sd.latent import SDModel
from bench.sd.prompts import Request
from bench.sd.sampler import OneStepPromptSampler, PromptSampler
from metrics.concepts import ObjectAccuracy, imagenet_logits, load_resnet50


@dataclass(frozen=True)
class ProbeBudget:
    images: int  # rendered images per setting, and real forget images (completion, attack, relearn)
    attack_steps: int  # Adam steps of the token-embedding attack
    attack_lr: float
    relearn_every: int  # fine-tuning steps between two checks
    relearn_cap: int
    relearn_batch: int
    relearn_lr: float


# sd-digits (the micro model, a CPU): the class tasks' relearn schedule and a short attack; Stable Diffusion
# v1.x (512 px, a GPU): fewer images, SD's fine-tuning learning rate and a batch that fits in memory
DIGITS_BUDGETS = {"smoke": ProbeBudget(16, 20, 5e-3, 10, 40, 16, 1e-4),
                  "fast": ProbeBudget(50, 100, 5e-3, 10, 300, 32, 1e-4)}
SD_BUDGETS = {"smoke": ProbeBudget(4, 4, 5e-3, 2, 4, 2, 1e-5),
              "fast": ProbeBudget(20, 200, 5e-3, 50, 500, 4, 1e-5),
              "paper": ProbeBudget(50, 500, 5e-3, 50, 1000, 4, 1e-5)}


def probe_budget(task: Any, profile: Any) -> ProbeBudget:
    table = DIGITS_BUDGETS if getattr(task, "family", "") == "digits" else SD_BUDGETS
    return table.get(profile.name, table["fast"])


def forget_reader(ev: ConceptEvalContext) -> tuple[Callable[[Tensor], float] | None, str]:
    """``(read, why not)``: ``read(uint8 images)`` is the share read as the forget concept by the classifier of
    the task's UA (sd-digits: the digits classifier, as ``concept_acc``; sd-object: the ImageNet ResNet-50 of
    ``--imagenet-classifier``, top-1 = the concept's ImageNet class, as ``object_acc``); None elsewhere."""
    family, dev = getattr(ev.task, "family", ""), ev.assets.device
    if family == "digits":
        clf = ev.assets.classifier()
        return lambda imgs: float((predict(clf, to_digits_space(imgs)).argmax(1) == ev.concept).float().mean()), ""
    if family == "object":
        path = getattr(ev.options, "imagenet_classifier", None)
        if not path:
            return None, f"{ev.task.name} reads its images with --imagenet-classifier, which was not given"
        net, target = load_resnet50(path, dev), ObjectAccuracy.IMAGENET_IDS[ev.concept]
        return lambda imgs: float((imagenet_logits(net, imgs, dev).argmax(1) == target).float().mean()), ""
    return None, f"{ev.task.name} has no classifier-based UA to read the probe's images"


def forget_prompt(ev: ConceptEvalContext) -> str:
    """The caption of the concept's training images (D_f), which completion, the attack and relearn use."""
    return ev.task.prompts(ev.concept).forget


def probe_requests(ev: ConceptEvalContext, n: int, seed: int, guidance: float, prompt: str | None = None
                   ) -> list[Request]:
    """``n`` images of one fresh row seeded ``seed``: the forget set's prompts in turn (or ``prompt``)."""
    forget = [r.prompt for _use, es, _imgs in ev.of_use("forget") for r in es.requests] or [forget_prompt(ev)]
    return [Request("probe", i, prompt or forget[i % len(forget)], seed, i, guidance) for i in range(n)]


def render(sampler: PromptSampler, requests: list[Request]) -> Tensor:
    return sampler.sample(requests, block=len(requests))


class _FromStep:
    """An :class:`SDModel` whose DDIM schedule starts at ``t_start``: the timesteps above it are cut and the
    spacing stays that of the full schedule (diffusers' img2img), so any sampler that asks its model for the
    schedule (the plain one, SLD's) denoises a given latent from there with its own rule."""

    def __init__(self, model: SDModel, t_start: int) -> None:
        self._model, self._t_start = model, t_start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def ddim(self, steps: int):
        sched = self._model.ddim(steps)
        sched.timesteps = sched.timesteps[sched.timesteps <= self._t_start]
        return sched


def start_step(model: SDModel, steps: int, level: float) -> int:
    """The timestep of the ``steps``-step DDIM schedule nearest to ``level`` · T."""
    ts = model.ddim(steps).timesteps
    return int(ts[(ts.float() - level * model.num_timesteps).abs().argmin()])


@torch.no_grad()
def denoise_from(sampler: PromptSampler, z_t: Tensor, t_start: int, prompts: list[str], guidance: float) -> Tensor:
    """Decoded images (float, on the CPU) of latents ``z_t`` at DDIM timestep ``t_start``, denoised by the
    sampler (its UNet, rule and text encoder) over the rest of its schedule, in its batches and precision."""
    s = copy.copy(sampler)
    s.model = _FromStep(sampler.model, t_start)
    dev = sampler.model.device
    amp = torch.autocast(dev.type, dtype=s.dtype) if s.dtype != torch.float32 else contextlib.nullcontext()
    out = []
    with eval_mode(s.net), amp:
        for i in range(0, len(z_t), s.batch_size):
            out.append(s._render(z_t[i:i + s.batch_size], prompts[i:i + s.batch_size], guidance).float().cpu())
    return torch.cat(out)


class ConceptProbe(Metric):
    """A concept probe: ``run(ev, sampler, read, budget) -> columns`` (a ``<prefix>_note`` among them when it
    could not run after all). The row gets them with ``<prefix>_s``; a one-step generator or a task without a
    classifier-based UA gets NaN, ``<prefix>_note`` and ``<prefix>_columns`` (the tables show "n/a" with the
    reason)."""

    default = False
    task_kinds = frozenset({"concept"})
    prefix: ClassVar[str] = ""
    one_step: ClassVar[str] = ""  # why a one-step generator has no value

    def compute(self, ev: ConceptEvalContext) -> dict[str, Any]:
        sampler = getattr(ev, "sampler", None)
        read, why = None, ""
        if sampler is None:
            why = "the evaluator passed no sampler"
        elif isinstance(sampler, OneStepPromptSampler):
            why = f"one-step generator ({self.one_step})"
        else:
            read, why = forget_reader(ev)
        if why:
            return {**{k: math.nan for k in self.directions}, f"{self.prefix}_note": f"not applicable: {why}",
                    f"{self.prefix}_columns": ",".join(self.directions)}
        dev = sampler.model.device
        t0 = time.perf_counter()
        def shown(imgs: Tensor, show_as: str = "") -> float:
            if show_as:
                ev.show(show_as, imgs)
            return read(imgs)

        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            out = self.run(ev, sampler, shown, probe_budget(ev.task, ev.profile))
        return {f"{self.prefix}_note": "", **out, f"{self.prefix}_s": time.perf_counter() - t0}

    def run(self, ev: ConceptEvalContext, sampler: PromptSampler, read: Callable[..., float],
            budget: ProbeBudget) -> dict[str, Any]:
        """The probe's columns; ``read(images, show_as="")`` is the share read as the forget concept and, given
        ``show_as``, keeps the first images for the cell's probe grid under that name."""
        raise NotImplementedError  # pragma: no cover - per probe
