"""What the user asked for, as two frozen objects built once (from the command line, or by hand in Python):
:class:`Options`, how cells run, handed to the driver, to every sweep worker and to calibration, so that all
of them see the same settings; and :class:`Grid`, which cells. Both are light to import (no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bench.core.cache import default_cache_root
from bench.core.errors import BenchError

DEFAULT_OUT = Path("runs")


@dataclass(frozen=True)
class Options:
    """Where results and the cache go, the device and precision, where data and weights come from, how
    tables compute FID, and the concept tasks' inputs. Paths are made absolute on creation, so the object
    means the same in a worker that runs in another directory."""

    out: Path = DEFAULT_OUT
    cache: Path | None = None  # None: $BENCH_CACHE or ~/.cache/unlearn-bench
    device: str = "cpu"
    progress: bool = True
    precision: str = "fp32"  # fp32, or a subset of bf16, tf32, channels-last, compile
    # class tasks: data, base model, classifier, architecture, FID
    data_root: Path | None = None
    base_model: Path | None = None
    base_weights: str = "ema"
    pretrain_steps: int | None = None
    classifier: Path | None = None
    unet: str | None = None  # --unet: reference | diffusers (None: the task's own)
    fid_backend: str | None = None
    fid_features: str | None = None
    paper_compat: bool = False
    inception_weights: Path | None = None
    # concept tasks (sd-*)
    shard: tuple[int, int] = (0, 1)
    prompts_dir: Path | None = None
    allow_pickle: bool = False
    base_label: str = ""
    one_step_generator: Path | None = None
    forget_images: Path | None = None
    remain_images: Path | None = None
    imagenet_classifier: Path | None = None
    clip_model: Path | None = None
    coco_images: Path | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _PATHS and value is not None:
                object.__setattr__(self, f.name, Path(value).expanduser().resolve())
        if self.cache is None:
            object.__setattr__(self, "cache", default_cache_root().expanduser().resolve())
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise BenchError(f"--shard {i}/{n}: need 0 <= I < N")
        if self.base_weights not in ("ema", "raw"):
            raise BenchError(f"--base-weights must be ema or raw, not {self.base_weights!r}")

    def replace(self, **changes) -> Options:
        return dataclasses.replace(self, **changes)


_PATHS = {"out", "cache", "data_root", "base_model", "classifier", "inception_weights", "prompts_dir",
          "one_step_generator", "forget_images", "remain_images", "imagenet_classifier", "clip_model", "coco_images"}


@dataclass(frozen=True)
class Grid:
    """The cells a command asks for, as the user wrote them."""

    task: str
    methods: str  # "a,b" or "all"
    profile: str = "fast"
    forget_classes: tuple[int, ...] = ()  # () : the task's default
    concepts: str = ""  # concept tasks: names instead of forget classes ("Van Gogh,Rembrandt")
    seeds: tuple[int, ...] = (0,)
    base_seeds: tuple[int, ...] = (0,)
    sets: tuple[str, ...] = ()  # --set [METHOD.]KEY=VALUE
    steps: int | None = None
    metrics: str = ""  # optional metrics
    plugins: tuple[str, ...] = ()
    yes: bool = False  # run a concept profile whose estimated CPU time is long
