"""The metric contract: ``compute(ev) -> {key: value}`` with a direction and a version per key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.assets.classes import Assets
from bench.assets.training import predict
from bench.core.registry import Registry
from bench.models.diffusion import from_uint8
from bench.models.generators import Generator

PROBE_GRID_IMAGES = 8


@dataclass
class EvalContext:
    """What a class-task metric sees: the samples the driver drew once, the task assets and the generator."""

    assets: Assets
    generator: Generator
    forget_class: int
    cover_class: int
    seed: int
    forget_images: Tensor  # uint8 (N_ua, C, H, W), all conditioned on the forget class
    remain_images: Tensor  # uint8 (9 * n_per_class, C, H, W)
    remain_labels: Tensor  # the class each remain image was conditioned on
    cache: dict[str, Any] = field(default_factory=dict)
    #: a few images per probe setting (uint8), drawn into the cell's ``probes.png``
    probe_images: dict[str, Tensor] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.assets.device

    def probs(self, which: str) -> Tensor:
        """Classifier probabilities of the ``forget`` or ``remain`` samples (computed once)."""
        key = f"probs:{which}"
        if key not in self.cache:
            imgs = self.forget_images if which == "forget" else self.remain_images
            self.cache[key] = predict(self.assets.classifier(), from_uint8(imgs))
        return self.cache[key]

    def forget_accuracy(self, imgs_u8: Tensor, show_as: str = "") -> float:
        """Share of the given images the task classifier reads as the forget class (1 - UA of those images);
        ``show_as`` keeps the first 8 for the cell's probe grid under that name."""
        if show_as:
            _show(self.probe_images, show_as, imgs_u8)
        pred = predict(self.assets.classifier(), from_uint8(imgs_u8)).argmax(1)
        return float((pred == self.forget_class).float().mean())

    def real_remain(self) -> Tensor:
        """Real remaining-class training images (uint8) — the FID reference set (the first
        ``fid_ref_per_class`` of each remaining class in file order when the profile sets it)."""
        return real_remain(self.assets, self.forget_class)


@dataclass
class ConceptEvalContext:
    """What a concept-task metric sees: rendered images per evaluation set, the model assets, the cell's
    concept and the run's options (paths of optional metric inputs such as ``clip_model``); for the recovery
    probes also the sampler that rendered the sets (the method's UNet, guidance rule and text encoder; None
    when nothing was rendered) and the cell seed."""

    assets: Any
    task: Any
    profile: Any
    concept: int
    sets: dict[str, tuple[str, Any, Tensor]]  # name -> (use, EvalSet, uint8 images in request order)
    options: Any
    sampler: Any = None
    seed: int = 0
    #: a few images per probe setting (uint8), drawn into the cell's ``probes.png``
    probe_images: dict[str, Tensor] = field(default_factory=dict)

    def show(self, show_as: str, imgs_u8: Tensor) -> None:
        """Keep the first images of a probe setting for the cell's probe grid under the name ``show_as``."""
        _show(self.probe_images, show_as, imgs_u8)

    def of_use(self, use: str) -> list[tuple[str, Any, Tensor]]:
        return [(n, es, imgs) for n, (u, es, imgs) in self.sets.items() if u == use]


def _show(grid: dict[str, Tensor], show_as: str, imgs_u8: Tensor) -> None:
    grid[show_as] = imgs_u8[:PROBE_GRID_IMAGES].cpu()


def real_remain(assets: Assets, forget_class: int) -> Tensor:
    own = getattr(assets, "real_remain", None)  # assets whose images stay on disk choose their reference set
    if own is not None:
        return own(forget_class)
    s = assets.splits
    keep = s.train_y != forget_class
    n = assets.profile.fid_ref_per_class
    if n:
        idx = [torch.nonzero(s.train_y == c).flatten()[:n] for c in range(assets.task.num_classes) if c != forget_class]
        keep = torch.sort(torch.cat(idx)).values
    return ((s.train_x[keep].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Metric:
    name: ClassVar[str] = ""
    #: value columns this metric writes, each with its direction: True if higher is better,
    #: None for values recorded without a direction
    directions: ClassVar[dict[str, bool | None]] = {}
    definition: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: computed on every run unless False (then only with ``--metrics``)
    default: ClassVar[bool] = True
    #: task kinds the metric scores: "class" and/or "concept"
    task_kinds: ClassVar[frozenset[str]] = frozenset({"class"})

    def applies(self, task: Any) -> bool:
        """Whether this metric scores ``task`` (a concept metric may apply to one family only)."""
        return getattr(task, "kind", "class") in self.task_kinds

    def empty(self) -> dict[str, Any]:
        """The columns of a cell that produced no images (a skipped method): NaN."""
        return {k: float("nan") for k in self.directions}

    def compute(self, ev: EvalContext) -> dict[str, Any]:  # pragma: no cover - the contract
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "directions": cls.directions, "definition": cls.definition,
                "version": cls.version, "default": cls.default, "task_kinds": sorted(cls.task_kinds)}


METRICS: Registry[type[Metric]] = Registry("metric", Metric)
#: names that stand for several optional metrics in ``--metrics``; a cell keeps those that apply to its task
#: (the class probes on class tasks, the concept probes on concept tasks)
METRIC_GROUPS: dict[str, tuple[str, ...]] = {"robustness": ("sampling_sweep", "completion", "embedding_attack",
                                                                "relearn", "concept_sweep", "concept_completion",
                                                                "concept_token_attack", "concept_prompt_attack",
                                                                "concept_relearn")}


def resolve_metrics(spec: str) -> list[str]:
    """``--metrics``: metric names and group names (``robustness``), comma-separated, as validated metric names."""
    names = []
    for n in (s.strip() for s in spec.split(",") if s.strip()):
        names.extend(METRIC_GROUPS.get(n.lower(), (n,)))
    return METRICS.resolve_list(",".join(names))


def register_metric(name: str):
    def deco(cls: type[Metric]) -> type[Metric]:
        cls.name = name
        METRICS.add(name, cls)
        return cls

    return deco
