"""RL: relabel the forget class to the fixed next class, no saliency mask (methods.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Method, register_method
from methods._relabel import relabel_loop
from methods._sd import NUDITY_LIKE, RelabelConfig, merge_presets, per_task
from methods._sd import relabel_loop as relabel_loop_sd

# concept presets shared by RL-SD and SalUn-SD (sd-concepts spec §3.2): nudity hyperparameters for nudity,
# style and celebrity. sd-digits (harness choice, calibrated on forget caption "zero", 200 iterations): lr 1e-4 and
# α = 2 keep retained accuracy at 0.81 with UA 1.0; the reference lr 1e-5 with α 0.5 forgets as fully but leaves
# 0.23 (lr 1e-4, α 0.5: 0.58)
CONCEPT_PRESETS = merge_presets(
    {"smoke": {"iters": 4}},
    per_task({t: {"alpha": 0.1, "iters": 100} for t in NUDITY_LIKE}, ("fast", "paper")),
    per_task({t: {"alpha": 0.1} for t in NUDITY_LIKE}, ("smoke",)),
    per_task({"sd-digits": {"lr": 1e-4, "batch": 16, "alpha": 2.0}}),
    {"sd-digits:smoke": {"iters": 100}, "sd-digits:fast": {"iters": 200}},
)

REFERENCE_PIXELS = 3 * 32 * 32  # CIFAR-10, where alpha = 1e-3 was tuned


@register_method("rl")
class RandomLabel(Method):
    """The SalUn stage-B loop without the mask: forget images labelled c_f regress onto the model's
    own prediction for (c_f + 1) mod 10, element-mean loss, plus 1e-3 * L_simple on D_r."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 1000
        lr: float = 1e-4
        batch: int = 128
        alpha: float = 1e-3
        clip: float = 1.0
        p_drop: float = 0.1

    paper = "random-label baseline (SalUn, arXiv 2310.12508; Unlearn-Saliency DDPM --method rl)"
    data_free = False
    status = "reference"
    presets = {"fast": {"iters": 150}, "smoke": {"iters": 20}}
    task_kinds = frozenset({"class", "concept"})
    ConceptConfig = RelabelConfig
    concept_presets = CONCEPT_PRESETS

    @classmethod
    def task_defaults(cls, task, profile) -> dict:
        """Harness choice: keep the reference balance of the two reductions. alpha = 1e-3 weighs a
        pixel-SUM remain loss against an element-MEAN forget loss over CIFAR's 3x32x32 = 3072 pixels;
        on a task with P pixels the same per-element balance is alpha = 1e-3 * 3072 / P (digits:
        0.048). Without it the remain term is 48x weaker on 8x8 digits and SalUn's retained accuracy
        collapses to ~0.35 (measured in calibration, with the earlier 800-step base model).
        ``--set alpha=...`` still overrides it."""
        pixels = task.channels * task.image_size * task.image_size
        return {"alpha": cls.Config().alpha * REFERENCE_PIXELS / pixels}

    def unlearn(self, ctx):
        net = relabel_loop(ctx, ctx.base_model("raw"), self.config)
        return ctx.sampler(net, weights="raw")

    def unlearn_concept(self, ctx):
        """RL-SD (Reference ``random_label.py`` without the mask): the forget prompt's prediction on D_f
        regresses onto the model's own prediction for the cover prompt, plus α · L_ldm on D_r; full UNet,
        Adam, no clipping."""
        return relabel_loop_sd(ctx, self.config)
