"""A grid of cells (methods × forget classes or concepts × seeds × base seeds on one task and profile), planned
and checked before any compute is spent, for ``bench run`` and ``bench sweep`` alike."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.argchecks import check_paths, check_steps
from bench.core.errors import BenchError
from bench.core.paths import ensure_writable_dir
from bench.engine.driver import CellSpec, Driver, resolve_task
from bench.engine.options import Grid, Options
from bench.engine.plugins import load_all
from bench.method import METHODS, parse_value, supports
from bench.metric import resolve_metrics
from bench.models.checkpoints import load_base_model
from bench.models.imagenet_classifier import require_classifier
from bench.models.latent import check_against_task, check_pipeline
from bench.sd.loading import validate_sd_folder
from metrics.inception import find_inception


@dataclass
class Plan:
    task: Any
    driver: Driver
    specs: list[CellSpec] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def parse_sets(items: tuple[str, ...], methods: list[str]) -> dict[str, dict]:
    """``--set`` items -> per-method option overrides (``KEY=VALUE`` applies to every method)."""
    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects METHOD.KEY=VALUE or KEY=VALUE, got {item!r}")
        method, dot, name = key.rpartition(".")
        if dot and method not in out:
            raise BenchError(f"--set {item!r}: method {method!r} is not among --methods ({', '.join(methods)})")
        for m in [method] if dot else methods:
            out[m][name] = parse_value(value)
    return out


def check_inception(task: Any, profile: Any, weights: Path | None) -> None:
    """With Inception-v3 FID, missing weights are one message before any work."""
    if (profile.fid_features or task.fid_features) == "inception-v3":
        find_inception(str(weights) if weights else None)


def plan_grid(options: Options, grid: Grid, threads: int | None = None, log=None) -> Plan:
    """Validate the options and every cell of the grid before any compute is spent. User mistakes raise
    BenchError."""
    load_all(grid.plugins)
    kind = getattr(resolve_task(grid.task, options), "kind", "class")  # names first: a typo creates no folder
    methods = METHODS.resolve_list(grid.methods)
    extra = tuple(resolve_metrics(grid.metrics)) if grid.metrics.strip() else ()
    check_paths(options)
    ensure_writable_dir(options.out, "--out")
    ensure_writable_dir(options.cache, "the asset cache (--cache or $BENCH_CACHE)")
    driver = Driver(options, log=log)
    task = driver.task(grid.task)  # the task, its options applied, bound to its data: a missing dataset is one message
    profile = driver.profile(task, grid.profile)
    if grid.methods.strip().lower() == "all":  # reference rows first, so a partial run already has its anchors
        methods = [m for m in methods if supports(METHODS.get(m), kind)]
        methods.sort(key=lambda m: (not METHODS.get(m).reference_row, m))
    if kind == "concept":
        _check_concept(options, grid, task, profile)
    else:
        if grid.concepts or options.shard != (0, 1):
            raise BenchError(f"--concept and --shard apply to concept tasks (sd-*); {task.name} is a class task")
        check_inception(task, profile, options.inception_weights)
        if getattr(task, "latent", False):
            _check_latent(options, task, extra)
        elif options.base_model:  # the checkpoint against the task's architecture, before any work
            load_base_model(options.base_model, {"arch": task.arch, "config": profile.unet_config or task.unet_config},
                            task.num_classes, weights=options.base_weights)
    classes = list(grid.forget_classes) or [task.default_forget]
    if grid.concepts:
        if grid.forget_classes:
            raise BenchError("pass either --concept or --forget-class, not both")
        classes = [task.concept_index(c) for c in grid.concepts.split(",") if c.strip()]
    if kind == "concept":
        driver.assets(task, grid.profile).eval_sets(classes[0])  # the prompt files, before any work
    sets = parse_sets(grid.sets, methods)
    check_steps(grid.steps)
    if options.device == "cpu":
        # OMP_NUM_THREADS, where set, is the user's (or a scheduler's) share of the cores
        torch.set_num_threads(threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, os.cpu_count() or 1))
    specs = [CellSpec(task.name, m, c, s, grid.profile, sets[m], grid.steps, extra, base_seed=b)
             for b in grid.base_seeds for c in classes for s in grid.seeds for m in methods]
    names = [driver.plan(spec).name for spec in specs]
    return Plan(task, driver, specs, names)


def _check_latent(o: Options, task: Any, extra: tuple[str, ...]) -> None:
    """A latent class task (imagenet-dit) brings every model from the user: the pipeline folder is checked from
    its configs (the weights are read once, by the cells), and a classifier must be named. The optional class
    metrics sample in pixel space or read in-memory training images, so they are refused here."""
    if extra:
        raise BenchError(f"--metrics {','.join(extra)}: the optional class metrics work on pixel-space tasks with "
                         f"in-memory data; {task.name} (VAE latents, streamed images) has only ua, retain_acc and fid")
    layout = check_pipeline(o.base_model, task.name)
    check_against_task(layout, task.num_classes, (task.channels, task.image_size, task.image_size), task.pixel_size)
    require_classifier(o.classifier, task.name)


def _check_concept(o: Options, grid: Grid, task: Any, prof: Any) -> None:
    """Concept-only checks: no class-task options, the SD folder, and a long CPU profile needs ``yes``."""
    for flag, value in (("--pretrain-steps", o.pretrain_steps), ("--fid-backend", o.fid_backend),
                        ("--fid-features", o.fid_features), ("--paper-compat", o.paper_compat),
                        ("--classifier", o.classifier), ("--unet", o.unet)):
        if value:
            raise BenchError(f"{flag} applies to class tasks; {task.name} is a concept task")
    if task.family == "digits" and o.base_model:
        raise BenchError(f"{task.name} trains its own micro text-to-image model; --base-model applies to the "
                         f"Stable Diffusion tasks (sd-nudity, sd-object, sd-style, sd-celebrity)")
    if prof.needs_base_model and not o.base_model:
        raise BenchError(f"task {task.name!r}, profile {prof.name!r} needs --base-model PATH: a Stable Diffusion "
                         f"v1.x diffusers folder (v1.4 or v1.5); the smoke profile runs on a built-in micro model")
    if o.device == "cpu" and prof.est_seconds_cpu > 15 * 60 and not grid.yes:
        hours = prof.est_seconds_cpu / 3600
        raise BenchError(f"{task.name} --profile {prof.name} on a CPU takes roughly {hours:.0f} h per cell (512 px "
                         f"Stable Diffusion); run it on a GPU with --device cuda, or pass --yes to run it here anyway")
    if o.base_model:
        validate_sd_folder(o.base_model, strict_v1=True, allow_pickle=o.allow_pickle)
