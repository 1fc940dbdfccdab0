"""The user-mistake messages about names and numbers on the command line, in one place: the full planner
(:mod:`bench.running.grid`, the driver, the tasks) and the quick check from the catalogue
(:mod:`bench.cli.catalog`, no plugin imported) raise the same words for the same mistake."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError


def check_profile(task: str, name: str, profiles: Iterable[str]) -> None:
    profiles = list(profiles)
    if name not in profiles:
        raise BenchError(f"task {task!r} has no profile {name!r}; available: {', '.join(profiles)}")


def concept_index(task: str, name: str, concepts: Iterable[str]) -> int:
    """The index of concept ``name`` (any case) among the task's ``concepts``."""
    low = {c.lower(): i for i, c in enumerate(concepts)}
    if name.strip().lower() not in low:
        raise BenchError(f"task {task!r} has no concept {name!r}; concepts: {', '.join(concepts)}")
    return low[name.strip().lower()]


def check_forget(task: str, num_classes: int, forget: int) -> None:
    if not 0 <= forget < num_classes:
        raise BenchError(f"--forget-class must be in 0..{num_classes - 1} for task {task!r}, got {forget}")


def check_seeds(seed: int, base_seed: int) -> None:
    if base_seed < 0 or seed < 0:
        raise BenchError(f"seeds must be non-negative, got --seed {seed} --base-seed {base_seed}")


def check_kind(method: str, kind: str, task: str, kinds: Iterable[str], kind_methods: Iterable[str]) -> None:
    """``method`` (whose task kinds are ``kinds``) runs on a ``kind`` task; else name those that do."""
    if kind not in kinds:
        raise BenchError(f"method {method!r} does not support {kind} tasks ({task}); {kind} methods: "
                         f"{', '.join(kind_methods)}")


def check_steps(steps: int | None) -> None:
    if steps is not None and steps < 0:
        raise BenchError(f"--steps must be non-negative, got {steps}")


def check_paths(o: Any) -> None:
    """The files and folders named in the options (:class:`~bench.engine.options.Options`) exist."""
    if o.pretrain_steps is not None and o.pretrain_steps < 1:
        raise BenchError(f"--pretrain-steps must be positive, got {o.pretrain_steps}")
    for flag in ("base_model", "classifier", "imagenet_classifier", "clip_model", "coco_images", "inception_weights"):
        value = getattr(o, flag)
        if value and not Path(value).exists():
            raise BenchError(f"--{flag.replace('_', '-')} {value}: no such file or folder")
    for flag in ("forget_images", "remain_images"):
        value = getattr(o, flag)
        if value and not Path(value).is_dir():
            raise BenchError(f"--{flag.replace('_', '-')} {value}: no such folder")
