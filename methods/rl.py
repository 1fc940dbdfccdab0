"""RL: relabel the forget class (or concept) to the cover one, no saliency mask (methods.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, merge_presets, per_task, register_method
from methods._relabel import relabel_loop

NUDITY_LIKE = ("sd-nudity", "sd-style", "sd-celebrity")  # nudity hyperparameters (style/celebrity: reconstruction)
REFERENCE_PIXELS = 3 * 32 * 32  # CIFAR-10, where alpha = 1e-3 was tuned

# concept tasks (RL-SD and SalUn-SD, Reference random_label.py / nsfw_removal.py; docs/methods.md "RL and SalUn")
CONCEPT_PRESETS = merge_presets(
    {"concept": {"iters": 600, "lr": 1e-5, "batch": 8, "alpha": 0.5, "clip": 0.0, "p_drop": 0.0},
     "concept:smoke": {"iters": 4}},
    per_task({t: {"alpha": 0.1, "iters": 100} for t in NUDITY_LIKE}, ("fast", "paper")),
    per_task({t: {"alpha": 0.1} for t in NUDITY_LIKE}, ("smoke",)),
    per_task({"sd-digits": {"lr": 1e-4, "batch": 16, "alpha": 2.0}}),
    {"sd-digits:smoke": {"iters": 100}, "sd-digits:fast": {"iters": 200}},
)


@register_method("rl")
class RandomLabel(Method):
    """The SalUn stage-B loop without the mask: forget images under the forget condition regress onto the
    model's own prediction for the cover condition (class (c_f + 1) mod K, or the cover prompt), element-mean
    loss, plus ``alpha`` times the task's loss on D_r; clip, then Adam.

    Class tasks: label dropout 0.1, clip 1.0, alpha 1e-3 rescaled to the task's pixel count
    (:meth:`task_defaults`). Concept tasks (``concept`` preset): the SD reference's lr 1e-5, batch 8,
    alpha 0.5 (nudity, style, celebrity: 0.1), no clipping, no caption dropout, full UNet. Calibration of the
    sd-digits preset: docs/methods.md."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-4
        batch: int = 128
        alpha: float = 1e-3
        clip: float = 1.0  # 0: no clipping
        p_drop: float = 0.1
        forget_batch: str = "shuffled"  # "first": the SD reference's unshuffled next(iter(loader)) quirk

    paper = "random-label baseline (SalUn, arXiv 2310.12508; Unlearn-Saliency DDPM --method rl)"
    data_free = False
    status = "reference"
    presets = merge_presets({"fast": {"iters": 150}, "smoke": {"iters": 20}}, CONCEPT_PRESETS)
    task_kinds = frozenset({"class", "concept"})

    @classmethod
    def task_defaults(cls, task, profile) -> dict:
        """Class tasks (harness choice): keep the reference balance of the two reductions. alpha = 1e-3 weighs
        a pixel-SUM remain loss against an element-MEAN forget loss over CIFAR's 3x32x32 = 3072 pixels; on a
        task with P pixels the same per-element balance is alpha = 1e-3 * 3072 / P (digits: 0.048)."""
        if getattr(task, "kind", "class") != "class":
            return {}
        pixels = task.channels * task.image_size * task.image_size
        return {"alpha": cls.Config().alpha * REFERENCE_PIXELS / pixels}

    def unlearn(self, ctx):
        net = relabel_loop(ctx, ctx.base_model(), self.config)
        return ctx.sampler(net)
