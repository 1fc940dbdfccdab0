"""The driver: runs one cell (task, method, forget class or concept, seed, resolved config) and measures it.

The phases are the same for class and concept tasks: prepare (the cached assets), unlearn (the method through
:class:`bench.context.UnlearnContext`, with counted optimizer steps, backward passes and forward evaluations,
peak memory, and probes, snapshots and bisection kept out of the time), sample and evaluate. What differs by
task kind comes from the task's model family (conditioning, encoder, schedule: :mod:`bench.models.family`,
:mod:`bench.sd.family`) and its evaluation (one draw of class-conditional images, :mod:`.class_eval`, or the
sharded rendering of prompt sets, :mod:`.concept_eval`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.assets.classes import Assets
from bench.assets.concepts import ConceptAssets
from bench.assets.latent_classes import LatentAssets
from bench.context import SkipCell, UnlearnContext
from bench.core.argchecks import check_forget, check_kind, check_seeds
from bench.core.codever import harness_version, method_version
from bench.core.envinfo import environment
from bench.core.errors import BenchError
from bench.core.hashing import canonical, content_hash, user_model_hash
from bench.core.measure import Counts, PeakMemory, Stopwatch
from bench.core.precision import parse_precision
from bench.core.store import cell_dir, is_complete, load_row, write_cell
from bench.engine.class_eval import ClassEvaluation
from bench.engine.concept_eval import ConceptEvaluation
from bench.engine.options import Options
from bench.engine.outcome import Evaluated, Unlearned
from bench.method import METHODS, Method, methods_for, resolve_config
from bench.metric import METRICS
from bench.models.factory import select_unet
from bench.sd.loading import base_hash, folder_hashes
from bench.tasks import TASKS, get_task

EVALUATIONS = {"class": ClassEvaluation, "concept": ConceptEvaluation}


@dataclass
class CellSpec:
    """A cell as the user names it (strings and numbers, so it travels to sweep workers and failure records)."""

    task: str
    method: str
    forget_class: int
    seed: int = 0
    profile: str = "fast"
    overrides: dict[str, Any] = field(default_factory=dict)
    iters: int | None = None
    metrics: tuple[str, ...] = ()  # optional metrics on top of the default ones
    base_seed: int = 0  # which base model (pretraining seed BASE_SEED + base_seed)


@dataclass(frozen=True)
class Cell:
    """A planned cell: the spec resolved once into the task, profile, method class and config objects, with
    its identity (everything its numbers depend on) and its name ``<method>-f<k>-b<b>-s<s>-<profile>-<id>``."""

    spec: CellSpec
    task: Any
    profile: Any
    method: type[Method]
    config: Any
    identity: dict
    name: str

    @property
    def id(self) -> str:
        return self.name.rsplit("-", 1)[1]

    @property
    def kind(self) -> str:
        return getattr(self.task, "kind", "class")

    @property
    def forget(self) -> int:
        return self.spec.forget_class

    @property
    def cover(self) -> int:
        return self.task.cover_class(self.spec.forget_class)


def resolve_task(name: str, options: Options | None = None) -> Any:
    """The registered task ``name`` with ``--unet`` and the FID options applied (a copy: the registered task is
    left alone); not yet bound to its data."""
    o = options or Options()
    if name not in TASKS:
        raise TASKS.unknown(name)
    task = select_unet(get_task(TASKS.canonical(name)), o.unet)
    changes = {k: v for k, v in (("fid_backend", o.fid_backend), ("fid_features", o.fid_features),
                                 ("paper_compat", o.paper_compat)) if v}
    if changes and getattr(task, "kind", "class") == "class":
        task = dataclasses.replace(task)
        task.profiles = {k: dataclasses.replace(v, **changes) for k, v in task.profiles.items()}
    return task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_metrics(kind: str = "class") -> list[str]:
    return [n for n in METRICS.names() if METRICS.get(n).default and kind in METRICS.get(n).task_kinds]


class Driver:
    """Runs cells with one set of :class:`~bench.engine.options.Options`; ``tasks`` are already resolved task
    objects to use instead of the registry's (calibration and tests pass modified profiles this way)."""

    def __init__(self, options: Options | None = None, log: Callable[[str], None] | None = None,
                 tasks: Iterable[Any] = ()) -> None:
        self.options = options = options or Options()
        self.out, self.cache_root, self.progress = options.out, options.cache, options.progress
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda was requested but no CUDA device is available")
        self.precision = parse_precision(options.precision)
        self.precision.apply_globals()
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._given = {t.name: t for t in tasks}
        self._tasks: dict[str, Any] = {}
        self._assets: dict[tuple[str, str, int], Any] = {}
        self._warm = self.device.type != "cuda"
        self._base_model_hash: str | None = None

    def log(self, msg: str) -> None:
        self._log(msg)

    # --- resolution, once per driver ------------------------------------------------------------
    def task(self, name: str) -> Any:
        """The task named ``name`` with ``--unet`` and the FID options applied, bound to its data (real-image
        tasks resolve their files here, once)."""
        if name not in self._tasks:
            task = self._given[name] if name in self._given else resolve_task(name, self.options)
            if hasattr(task, "bind") and not task.bound:
                task = task.bind(self.options.data_root, self.cache_root)
            self._tasks[name] = task
        return self._tasks[name]

    def profile(self, task: Any, name: str) -> Any:
        """The task's profile, with ``--pretrain-steps`` applied to its base-model recipe."""
        p = task.profile(name)
        if getattr(task, "kind", "class") == "class" and self.options.pretrain_steps is not None:
            p = dataclasses.replace(p, pretrain=dataclasses.replace(p.pretrain, steps=int(self.options.pretrain_steps)))
        return p

    def assets(self, task: Any, profile: str, base_seed: int = 0) -> Any:
        """The cached assets of (task, profile, base seed), created once per driver."""
        key = (task.name, profile, base_seed)
        if key not in self._assets:
            o = self.options
            if getattr(task, "kind", "class") == "concept":
                a = ConceptAssets(task, task.profile(profile), self.device, self.cache_root, o.base_model,
                                  o.allow_pickle, o.prompts_dir, self._log, o.forget_images, o.remain_images)
            else:  # a latent task (imagenet-dit) streams its data and brings every model from the user
                make = LatentAssets if getattr(task, "latent", False) else Assets
                a = make(task, self.profile(task, profile), self.device, self.cache_root, base_seed, self.precision,
                         o.data_root, o.base_model, o.base_weights, o.classifier)
                a.inception_weights = str(o.inception_weights) if o.inception_weights else None
            self._assets[key] = a
        return self._assets[key]

    def base_model_hash(self) -> str | None:
        path = self.options.base_model
        if path is None:
            return None
        if self._base_model_hash is None:
            if not path.exists():
                raise BenchError(f"--base-model {path}: no such file or folder")
            if (path / "model_index.json").is_file() and (path / "unet").is_dir():  # a diffusers SD folder: its weights
                self._base_model_hash = base_hash(folder_hashes(path))
            else:
                self._base_model_hash = user_model_hash(path)
        return self._base_model_hash

    def warm_up(self, step: Callable[[], None]) -> None:
        """Run ``step`` (one untimed forward and backward) once before the first timed cell on a GPU, so CUDA
        context creation, cuDNN autotuning and lazy allocations are not billed to a method."""
        if self._warm:
            return
        step()
        torch.cuda.synchronize(self.device)
        self._warm = True

    # --- cell identity -----------------------------------------------------------------------
    def plan(self, spec: CellSpec) -> Cell:
        """Resolve the cell's task, profile, method, config and id; raises BenchError on user mistakes."""
        task = self.task(spec.task)
        check_forget(task.name, task.num_classes, spec.forget_class)
        check_seeds(spec.seed, spec.base_seed)
        profile = self.profile(task, spec.profile)
        cls = METHODS.get(spec.method)
        kind = getattr(task, "kind", "class")
        check_kind(cls.name, kind, task.name, cls.task_kinds, methods_for(kind))
        cfg = resolve_config(cls, task, profile, spec.overrides, spec.iters)
        o = self.options
        # an optional metric of the other task kind (``--metrics robustness`` names both kinds' probes) is left out
        metrics = sorted(set(default_metrics(kind)) | {m for m in spec.metrics if METRICS.get(m)().applies(task)})
        identity = {"task": task.name, "variant": task.dataset_variant, "method": cls.name,
                    "method_version": cls.version, "forget_class": spec.forget_class,
                    "cover_class": task.cover_class(spec.forget_class), "seed": spec.seed,
                    "base_seed": spec.base_seed, "profile": dataclasses.asdict(profile),
                    "config": dataclasses.asdict(cfg), "metrics": metrics,
                    "device": self.device.type, "data": getattr(task, "data_info", {}).get("data_sha256"),
                    "precision": self.precision.describe(),
                    "base_model": ({"sha256": self.base_model_hash(), "weights": o.base_weights}
                                   if o.base_model else None),
                    "code": {"harness": harness_version(), "method": method_version(cls)},
                    **EVALUATIONS[kind].identity(self, task, spec)}
        name = (f"{cls.name}-f{spec.forget_class}-b{spec.base_seed}-s{spec.seed}-{profile.name}-"
                f"{content_hash(identity, 10)}")
        return Cell(spec, task, profile, cls, cfg, identity, name)

    def cell_folder(self, cell: Cell) -> Path:
        return cell_dir(self.out, cell.task.name, cell.name)

    def run(self, spec: CellSpec, resume: bool = True) -> dict[str, Any]:
        cell = self.plan(spec)
        folder = self.cell_folder(cell)
        if resume and is_complete(folder):
            self._log(f"skip {cell.name}: already complete")
            return load_row(folder)
        return self._compute(cell, folder)

    # --- one cell ----------------------------------------------------------------------------
    def _compute(self, cell: Cell, folder: Path) -> dict[str, Any]:
        assets = self.assets(cell.task, cell.spec.profile, cell.spec.base_seed)
        evaluation = EVALUATIONS[cell.kind](self, cell, assets)
        t0 = time.perf_counter()
        evaluation.prepare()
        prepare_s = time.perf_counter() - t0
        un = evaluation.unlearned(lambda: self._unlearn(cell, assets, evaluation.probe()))
        ev = evaluation.evaluate(un)
        row = self._row(cell, un, ev, prepare_s)
        if not un.skip_reason:
            _check_finite(row, cell.name, self._log)
        env = environment(self.device)
        config = {"identity": cell.identity, "method": cell.method.describe(),
                  "config": dataclasses.asdict(cell.config), "environment": env, "carried_cost": un.cost["carried"],
                  "unlearned_reused": un.reused,
                  "counts": {"forward_images_by_net": un.cost["forward_images"],
                             "backward_by_net": un.cost["backward_by_net"]}, **ev.config}
        s = cell.spec
        title = (f"{cell.method.name}: forget class {s.forget_class}, base seed {s.base_seed}, seed {s.seed}"
                 if cell.kind == "class" else f"{cell.method.name}: forget '{row.get('concept')}', seed {s.seed}")
        write_cell(folder, row, config, un.cost["curve"], un.cost["logs"], ev.grid, ev.grid_labels,
                   class_names=ev.grid_names, title=title, probe_images=ev.probe_images)
        evaluation.finish()
        return row

    def _unlearn(self, cell: Cell, assets: Any, probe: Any) -> Unlearned:
        """The method's unlearning run, measured: time, optimizer steps, passes, peak memory, probe curve."""
        p, seed = cell.profile, cell.spec.seed
        method = cell.method(cell.config)
        counts, watch = Counts(), Stopwatch(self.device)
        seed_everything(seed)
        gen, skip = None, ""
        with PeakMemory(self.device) as mem, counts.counting_optimizer_steps():
            family = assets.family(cell.forget, seed, counts)
            ctx = UnlearnContext(family, seed, counts, watch, probe, n_probes=p.n_probes, progress=self.progress,
                                 label=cell.name.rsplit("-", 1)[0], memory=mem, ua_target=p.ua_target,
                                 resolution=p.ttt_resolution, one_step_generator=self.options.one_step_generator)
            counts.enabled = True
            watch.start()
            try:
                with self.precision.autocast(self.device):
                    gen = method.unlearn(ctx)
            except SkipCell as exc:
                skip = str(exc)
            unlearn_s = watch.stop()
            counts.enabled = False
        ctx.close()
        if not skip and not (hasattr(gen, "sample") and hasattr(gen, "net")):
            raise TypeError(f"method {cell.method.name!r} returned {type(gen).__name__}, not a generator")
        cost = {"unlearn_s": unlearn_s, "setup_s": ctx.setup_seconds if ctx.setup_seconds is not None else unlearn_s,
                "grad_steps": counts.optimizer_steps, "backward_passes": counts.backward_passes,
                "forward_images": dict(counts.forward_images), "backward_by_net": dict(counts.backward_by_net),
                "peak_mem_unlearn_mb": mem.peak_mb, "peak_mem_kind": mem.kind, "probe_s": ctx.probe_seconds,
                "refine_s": ctx.refine_seconds, "refine_probes": ctx.refine_probes,
                "snapshot_interval": ctx.snapshot_interval, "curve": ctx.curve, "logs": ctx.logs, "info": ctx.info,
                "carried": ctx.carried, "data": getattr(family, "data_info", {}), "skip_reason": skip,
                "sampler": gen.describe() if gen is not None else {}}
        return Unlearned(gen, cost)

    def _row(self, cell: Cell, un: Unlearned, ev: Evaluated, prepare_s: float) -> dict[str, Any]:
        cls, cfg, p, s, c = cell.method, cell.config, cell.profile, cell.spec, un.cost
        carried, skip = c["carried"], un.skip_reason
        grad_steps = c["grad_steps"] + int(carried.get("optimizer_steps", 0))
        expected = 0 if skip else cls(cfg).expected_steps()
        if not skip and grad_steps != expected:
            self._log(f"warning: {cell.name}: the driver counted {grad_steps} optimizer steps, the budget "
                      f"says {expected} ({cfg.iters} iterations x {cls.steps_per_iter})")
        target = time_to_target(c["curve"], p.ua_target)
        env = environment(self.device)
        overrides = {**s.overrides, **({"iters": s.iters} if s.iters is not None else {})}
        return {
            "method": cls.name, "task": cell.task.name, "kind": cell.kind, "forget_class": s.forget_class,
            "cover_class": cell.cover, "base_seed": s.base_seed, "seed": s.seed, "profile": p.name,
            "status": "skipped" if skip else cls.status, "method_version": cls.version, "output": cls.output,
            "data_free": cls.data_free, "reference_row": cls.reference_row,
            **ev.values,
            "iters": int(cfg.iters), "grad_steps": grad_steps, "expected_steps": expected,
            "backward_passes": c["backward_passes"] + int(carried.get("backward_passes", 0)),
            "forward_images": int(sum(c["forward_images"].values())),
            "nfe": ev.nfe, **c["sampler"],
            "prepare_s": prepare_s, "setup_s": c["setup_s"], "unlearn_s": c["unlearn_s"] + carried.get("seconds", 0.0),
            "sample_s": ev.sample_s, "evaluate_s": ev.evaluate_s, "cost_carried": bool(carried),
            "peak_mem_unlearn_mb": max(c["peak_mem_unlearn_mb"], carried.get("peak_mem_mb", 0.0)),
            "peak_mem_sample_mb": ev.peak_mem_sample_mb, "peak_mem_evaluate_mb": ev.peak_mem_evaluate_mb,
            "peak_mem_kind": c["peak_mem_kind"],
            "ua_target": p.ua_target, "time_to_target_s": target["s"], "time_to_target_steps": target["steps"],
            "time_to_target_iters": target["iters"], "snapshot_interval": c["snapshot_interval"],
            "probe_s": c["probe_s"], "refine_s": c["refine_s"], "refine_probes": c["refine_probes"],
            "dataset_variant": cell.task.dataset_variant, "compute_precision": self.precision.tag(),
            "unet_arch": cell.task.arch,
            **ev.row,
            **{f"info_{k}": v for k, v in c["info"].items()},
            "config_hash": content_hash(dataclasses.asdict(cfg), 12),
            "config_json": json.dumps(canonical(dataclasses.asdict(cfg)), sort_keys=True),
            "config_overrides": json.dumps(canonical(overrides), sort_keys=True),
            "cell_id": cell.id, "cell": cell.name,
            "harness_code": cell.identity["code"]["harness"], "method_code": cell.identity["code"]["method"],
            "git": env["git"], "git_dirty": env["git"].endswith("-dirty"), "device": env["device"],
            "v_torch": env["v_torch"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def time_to_target(curve: list[dict], target: float) -> dict[str, float]:
    """Unlearning seconds, optimizer steps and iterations at the first curve point (scheduled probe or
    bisection probe) whose UA reaches ``target``; NaN when none does."""
    for point in sorted(curve, key=lambda p: p["iter"]):
        if point.get("ua", -1) >= target:
            return {"s": float(point["unlearn_s"]), "steps": float(point["grad_steps"]), "iters": float(point["iter"])}
    return {"s": math.nan, "steps": math.nan, "iters": math.nan}


def _check_finite(row: dict, name: str, log) -> None:
    core = ("ua", "retain_acc", "fid", "unlearn_s", "nfe", "peak_mem_unlearn_mb")  # others may be NaN by definition
    bad = [k for k in core if isinstance(row.get(k), float) and math.isnan(row[k])]
    if bad:
        log(f"warning: {name}: non-finite values for {', '.join(bad)}")
