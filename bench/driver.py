"""The driver: runs one cell (task, method, forget class, seed, resolved config) and measures it.

Phases: prepare (assets: base model, classifier), unlearn (the method, with counted optimizer steps,
backward passes and forward evaluations, peak memory, probes excluded from time), sample (one draw
of forget-class and remaining-class images, NFE measured), evaluate (every metric on those samples).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.assets import BASE_SEED, Assets
from bench.codever import harness_version, method_version
from bench.context import UnlearnContext
from bench.envinfo import environment
from bench.errors import BenchError
from bench.generators import Generator
from bench.hashing import canonical, content_hash
from bench.measure import Counts, PeakMemory, Stopwatch
from bench.method import METHODS, resolve_config
from bench.metric import METRICS, EvalContext
from bench.precision import Precision
from bench.store import cell_dir, is_complete, load_row, write_cell
from bench.tasks import Task, get_task

PROBE_SEED_OFFSET = 1_000_003


@dataclass
class CellSpec:
    task: str
    method: str
    forget_class: int
    seed: int = 0
    profile: str = "fast"
    overrides: dict[str, Any] = field(default_factory=dict)
    iters: int | None = None
    metrics: tuple[str, ...] = ()  # optional metrics on top of the default ones
    base_seed: int = 0  # which base model (pretraining seed BASE_SEED + base_seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_metrics(kind: str = "class") -> list[str]:
    return [n for n in METRICS.names() if METRICS.get(n).default and kind in METRICS.get(n).task_kinds]


class Driver:
    def __init__(self, out: Path, device: str = "cpu", cache_root: Path | None = None, progress: bool = True,
                 log=None, task_override: Task | None = None, precision: Precision | None = None,
                 data_root: Path | None = None, base_model: Path | None = None, base_weights: str = "ema",
                 pretrain_steps: int | None = None, inception_weights: str | None = None,
                 shard: tuple[int, int] = (0, 1), prompts_dir: Path | None = None, allow_pickle: bool = False,
                 base_label: str = "", one_step_generator: str | None = None,
                 concept_options: dict | None = None, classifier_path: Path | None = None,
                 forget_images: Path | None = None, remain_images: Path | None = None) -> None:
        self.out = Path(out)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda was requested but no CUDA device is available")
        self.cache_root = cache_root
        self.progress = progress
        self.precision = precision or Precision()
        self.precision.apply_globals()
        self.data_root = data_root
        self.base_model, self.base_weights = base_model, base_weights
        self.pretrain_steps = pretrain_steps
        self.inception_weights = inception_weights
        self.classifier_path = Path(classifier_path) if classifier_path else None
        self._base_model_hash: str | None = None
        self._assets: dict[tuple[str, str, int], Assets] = {}
        self._tasks: dict[str, Task] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._task_override = task_override
        self._warm = self.device.type != "cuda"
        # concept tasks (bench.sd): sharded rendering, prompt files, the user's SD folder and metric inputs
        self.shard = shard
        self.prompts_dir, self.allow_pickle, self.base_label = prompts_dir, allow_pickle, base_label
        self.one_step_generator = one_step_generator
        self.concept_options = concept_options or {}
        self.forget_images, self.remain_images = forget_images, remain_images
        self._concept_assets: dict[tuple[str, str], Any] = {}

    def get_task(self, name: str) -> Task:
        """The task, bound to its data (real-image tasks resolve their files once per driver)."""
        if self._task_override is not None and self._task_override.name == name:
            task = self._task_override
        elif name in self._tasks:
            return self._tasks[name]
        else:
            task = get_task(name)
        if hasattr(task, "bind") and not task.bound:
            task = task.bind(self.data_root, self.cache_root)
            if self._task_override is not None and self._task_override.name == name:
                self._task_override = task
        self._tasks[name] = task
        return task

    def assets(self, task: Task, profile: str, base_seed: int = 0) -> Assets:
        key = (task.name, profile, base_seed)
        if key not in self._assets:
            self._assets[key] = Assets(task, self.profile(task, profile), self.device, self.cache_root, base_seed,
                                       self.precision, self.data_root, self.base_model, self.base_weights,
                                       self.classifier_path)
            self._assets[key].inception_weights = self.inception_weights
        return self._assets[key]

    def concept_assets(self, task, profile: str):
        key = (task.name, profile)
        if key not in self._concept_assets:
            from bench.assets import default_cache_root
            from bench.sd.assets import ConceptAssets

            self._concept_assets[key] = ConceptAssets(task, task.profile(profile), self.device,
                                                      self.cache_root or default_cache_root(), self.base_model,
                                                      self.allow_pickle, self.prompts_dir, self._log,
                                                      self.forget_images, self.remain_images)
        return self._concept_assets[key]

    def profile(self, task: Task, name: str):
        """The task's profile, with ``--pretrain-steps`` applied to its base-model recipe."""
        p = task.profile(name)
        if getattr(task, "kind", "class") == "concept":
            return p
        if self.pretrain_steps is not None:
            p = dataclasses.replace(p, pretrain=dataclasses.replace(p.pretrain, steps=int(self.pretrain_steps)))
        return p

    def base_model_hash(self) -> str | None:
        if self.base_model is None:
            return None
        if self._base_model_hash is None:
            from bench.assets import user_model_hash

            if not Path(self.base_model).exists():
                raise BenchError(f"--base-model {self.base_model}: no such file or folder")
            if (Path(self.base_model) / "model_index.json").is_file():  # a diffusers SD folder: its weights
                from bench.sd.loading import base_hash, folder_hashes

                self._base_model_hash = base_hash(folder_hashes(Path(self.base_model)))
            else:
                self._base_model_hash = user_model_hash(Path(self.base_model))
        return self._base_model_hash

    def _warm_up(self, assets: Assets) -> None:
        """One untimed forward and backward of the base model before the first timed cell on a GPU, so
        CUDA context creation, cuDNN autotuning and lazy allocations are not billed to a method."""
        if self._warm:
            return
        net = assets.base("raw").train()
        x = assets.splits.train_x[:8].to(self.device)
        y = assets.splits.train_y[:8].to(self.device)
        with self.precision.autocast(self.device):
            assets.diffusion.simple_loss(net, x, y).backward()
        del net
        torch.cuda.synchronize(self.device)
        self._warm = True

    # --- cell identity -----------------------------------------------------------------------
    def plan(self, spec: CellSpec) -> tuple[Any, dict[str, Any], str]:
        """Resolve the method config and the cell id; raises BenchError on user mistakes."""
        task = self.get_task(spec.task)
        if not 0 <= spec.forget_class < task.num_classes:
            raise BenchError(f"--forget-class must be in 0..{task.num_classes - 1} for task {task.name!r}, "
                             f"got {spec.forget_class}")
        if spec.base_seed < 0 or spec.seed < 0:
            raise BenchError(f"seeds must be non-negative, got --seed {spec.seed} --base-seed {spec.base_seed}")
        profile = self.profile(task, spec.profile)
        cls = METHODS.get(spec.method)
        kind = getattr(task, "kind", "class")
        if kind not in cls.task_kinds:
            from bench.method import methods_for

            raise BenchError(f"method {cls.name!r} does not support {kind} tasks ({task.name}); {kind} methods: "
                             f"{', '.join(methods_for(kind))}")
        cfg = resolve_config(cls, task.name, profile.name, spec.overrides, spec.iters, task, profile)
        metric_names = sorted(set(default_metrics(kind)) | set(spec.metrics))
        identity = {"task": task.name, "variant": task.dataset_variant, "method": cls.name,
                    "method_version": cls.version, "forget_class": spec.forget_class,
                    "cover_class": task.cover_class(spec.forget_class), "seed": spec.seed,
                    "base_seed": spec.base_seed, "profile": dataclasses.asdict(profile),
                    "config": dataclasses.asdict(cfg), "metrics": metric_names, "device": self.device.type,
                    "data": getattr(task, "data_info", {}).get("data_sha256"),
                    "precision": self.precision.describe(),
                    "base_model": ({"sha256": self.base_model_hash(), "weights": self.base_weights}
                                   if self.base_model else None),
                    "code": {"harness": harness_version(), "method": method_version(cls)}}
        if getattr(task, "unet_switch", None):  # --unet: only then, so cells of the task's own U-Net keep their ids
            identity["unet_arch"] = task.arch
        if self.classifier_path is not None and kind == "class":
            from bench.hashing import file_sha256

            if not self.classifier_path.is_file():
                raise BenchError(f"--classifier {self.classifier_path}: no such file")
            identity["classifier"] = file_sha256(self.classifier_path)
        if kind == "concept":
            identity.update(kind="concept", concept=task.concepts[spec.forget_class],
                            base_label=self.base_label or None,
                            user_images={k: _folder_digest(v) for k, v in (("forget", self.forget_images),
                                                                             ("remain", self.remain_images)) if v})
        cell_id = content_hash(identity, 10)
        name = f"{cls.name}-f{spec.forget_class}-b{spec.base_seed}-s{spec.seed}-{profile.name}-{cell_id}"
        return cfg, identity, name

    def run(self, spec: CellSpec, resume: bool = True) -> dict[str, Any]:
        cfg, identity, name = self.plan(spec)
        folder = cell_dir(self.out, spec.task, name)
        if resume and is_complete(folder):
            self._log(f"skip {name}: already complete")
            return load_row(folder)
        if identity.get("kind") == "concept":
            from bench.sd.driver import run_concept_cell

            return run_concept_cell(self, spec, cfg, identity, name, folder)
        return self._run(spec, cfg, identity, name, folder)

    # --- one cell ----------------------------------------------------------------------------
    def _run(self, spec: CellSpec, cfg: Any, identity: dict, name: str, folder: Path) -> dict[str, Any]:
        task = self.get_task(spec.task)
        cls = METHODS.get(spec.method)
        method = cls(cfg)
        t0 = time.perf_counter()
        assets = self.assets(task, spec.profile, spec.base_seed)
        assets.base("raw")
        assets.classifier()
        self._warm_up(assets)
        prepare_s = time.perf_counter() - t0
        amp = self.precision.autocast(self.device)

        p = assets.profile
        forget, cover = spec.forget_class, task.cover_class(spec.forget_class)
        counts, watch = Counts(), Stopwatch(self.device)
        probe = DriverProbe(assets, forget, spec.seed) if p.n_probes > 0 else None
        seed_everything(spec.seed)
        with PeakMemory(self.device) as mem_unlearn, counts.counting_optimizer_steps():
            ctx = UnlearnContext(assets, forget, cover, spec.seed, counts, watch, probe, n_probes=p.n_probes,
                                 progress=self.progress, label=name.rsplit("-", 1)[0], memory=mem_unlearn,
                                 ua_target=p.ua_target, resolution=p.ttt_resolution)
            counts.enabled = True
            watch.start()
            with amp:
                generator = method.unlearn(ctx)
            unlearn_s = watch.stop()
            counts.enabled = False
        if not isinstance(generator, Generator):
            raise TypeError(f"method {cls.name!r} returned {type(generator).__name__}, not a Generator")
        unlearn_forward = dict(counts.forward_images)

        # --- sample ---
        t1 = time.perf_counter()
        counts.forward_images.clear()
        labels = torch.cat([torch.full((p.n_ua,), forget, dtype=torch.long),
                            torch.tensor([c for c in ctx.remain_classes for _ in range(p.n_per_class)],
                                         dtype=torch.long)])
        generator.batch_size = p.eval_batch
        with PeakMemory(self.device) as mem_sample, self.precision.autocast(self.device):
            counts.enabled = True
            imgs = generator.sample(labels, seed=spec.seed)
            counts.enabled = False
        nfe = sum(counts.forward_images.values()) / max(1, len(imgs))
        sample_s = time.perf_counter() - t1
        ctx.close()

        # --- evaluate ---
        t2 = time.perf_counter()
        ev = EvalContext(assets, generator, forget, cover, spec.seed, imgs[:p.n_ua], imgs[p.n_ua:], labels[p.n_ua:])
        values: dict[str, Any] = {}
        with PeakMemory(self.device) as mem_eval:
            for mname in identity["metrics"]:
                values.update(METRICS.get(mname)().compute(ev))
        evaluate_s = time.perf_counter() - t2

        carried = ctx.carried
        grad_steps = counts.optimizer_steps + int(carried.get("optimizer_steps", 0))
        target = time_to_target(ctx.curve, p.ua_target)
        expected = method.expected_steps()
        if grad_steps != expected:
            self._log(f"warning: {name}: the driver counted {grad_steps} optimizer steps, the budget "
                      f"says {expected} ({cfg.iters} iterations x {cls.steps_per_iter})")
        env = environment(self.device)
        clf_meta, base_meta = assets.classifier_meta, assets.base_meta
        row = {
            "method": cls.name, "task": task.name, "forget_class": forget, "cover_class": cover,
            "base_seed": spec.base_seed, "seed": spec.seed, "profile": p.name, "status": cls.status,
            "method_version": cls.version, "output": cls.output, "data_free": cls.data_free,
            "reference_row": cls.reference_row,
            **values,
            "iters": int(cfg.iters), "grad_steps": grad_steps, "expected_steps": expected,
            "backward_passes": counts.backward_passes + int(carried.get("backward_passes", 0)),
            "forward_images": int(sum(unlearn_forward.values())),
            "nfe": nfe, **generator.describe(),
            "prepare_s": prepare_s, "setup_s": ctx.setup_seconds if ctx.setup_seconds is not None else unlearn_s,
            "unlearn_s": unlearn_s + carried.get("seconds", 0.0), "sample_s": sample_s, "evaluate_s": evaluate_s,
            "cost_carried": bool(carried),
            "peak_mem_unlearn_mb": max(mem_unlearn.peak_mb, carried.get("peak_mem_mb", 0.0)),
            "peak_mem_sample_mb": mem_sample.peak_mb, "peak_mem_evaluate_mb": mem_eval.peak_mb,
            "peak_mem_kind": mem_unlearn.kind,
            "ua_target": p.ua_target, "time_to_target_s": target["s"], "time_to_target_steps": target["steps"],
            "time_to_target_iters": target["iters"], "snapshot_interval": ctx.snapshot_interval,
            "probe_s": ctx.probe_seconds, "refine_s": ctx.refine_seconds, "refine_probes": ctx.refine_probes,
            "n_ua": p.n_ua, "n_per_class": p.n_per_class,
            "dataset_variant": task.dataset_variant,
            "data_source": assets.splits.info.get("data_source", ""),
            "data_sha256": assets.splits.info.get("data_sha256", ""),
            "compute_precision": self.precision.tag(), "unet_arch": task.arch,
            "classifier_test_acc": clf_meta.get("test_acc"),
            "classifier_forget_recall": clf_meta.get("test_recall", [None] * (forget + 1))[forget],
            "classifier_hash": clf_meta.get("files", {}).get("classifier.safetensors", "")[:16],
            "classifier_source": clf_meta.get("path", "harness"),
            "base_training_seed": BASE_SEED + spec.base_seed,
            "base_hash": (base_meta.get("sha256") or base_meta.get("files", {}).get(_raw_weights(base_meta), ""))[:16],
            "base_steps": base_meta.get("steps"),
            "base_source": base_meta.get("path", "harness") if base_meta.get("kind") == "user" else "harness",
            **{f"info_{k}": v for k, v in ctx.info.items()},
            "config_hash": content_hash(dataclasses.asdict(cfg), 12),
            "config_json": json.dumps(canonical(dataclasses.asdict(cfg)), sort_keys=True),
            "config_overrides": json.dumps(canonical(_user_overrides(spec)), sort_keys=True),
            "cell_id": name.rsplit("-", 1)[1], "cell": name,
            "harness_code": identity["code"]["harness"], "method_code": identity["code"]["method"],
            "git": env["git"], "git_dirty": env["git"].endswith("-dirty"), "device": env["device"],
            "v_torch": env["v_torch"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _check_finite(row, name, self._log)
        config = {"identity": identity, "method": cls.describe(), "config": dataclasses.asdict(cfg),
                  "environment": env, "base": base_meta, "classifier": clf_meta, "carried_cost": carried,
                  "counts": {"forward_images_by_net": unlearn_forward,
                             "backward_by_net": dict(counts.backward_by_net)}}
        write_cell(folder, row, config, ctx.curve, ctx.logs, imgs, labels, class_names=list(task.class_names),
                   title=f"{cls.name}: forget class {forget}, base seed {spec.base_seed}, seed {spec.seed}")
        return row


class DriverProbe:
    """UA on ``probe_n`` forget-class samples and a probe FID on ``probe_n // 2`` samples per remaining
    class, with noise fixed per cell (offset from the evaluation seed); ``ua`` reuses the same
    forget-class noise, so a bisection probe and a scheduled probe score the same draws. The probe
    FID always goes through torch-fidelity on the task classifier's features (it only draws curves;
    the table's FID follows ``--fid-backend``)."""

    def __init__(self, assets: Assets, forget: int, seed: int) -> None:
        from bench.metric import real_remain

        p = assets.profile
        self.n, self.forget, self.seed = p.probe_n, forget, seed + PROBE_SEED_OFFSET
        remain = [c for c in range(assets.task.num_classes) if c != forget]
        self.labels = torch.tensor([forget] * p.probe_n + [c for c in remain for _ in range(p.probe_n // 2)])
        self.real = real_remain(assets, forget)
        self.assets = assets
        self._ref = None
        self.clf = assets.classifier()

    def _ua(self, imgs: torch.Tensor) -> float:
        from bench.diffusion import from_uint8
        from bench.train import predict

        return float((predict(self.clf, from_uint8(imgs)).argmax(1) != self.forget).float().mean())

    def ua(self, gen: Generator) -> float:
        return self._ua(gen.sample(self.labels[:self.n], seed=self.seed))

    def full(self, gen: Generator) -> dict[str, float]:
        from metrics.inception import feature_stats, frechet_distance

        imgs = gen.sample(self.labels, seed=self.seed)
        mu, sigma = self._reference()
        g_mu, g_sigma = feature_stats(self._extract(imgs[self.n:]))
        return {"ua": self._ua(imgs[:self.n]), "fid": frechet_distance(g_mu, g_sigma, mu, sigma)}

    def _reference(self):
        """Reference statistics of the classifier features of the real remaining-class images, computed
        once per (images, classifier) and cached on disk for every later cell and probe."""
        if self._ref is None:
            from metrics._fidelity import ClassifierFeatures
            from metrics.refstats import reference_stats

            tag = self.assets.classifier_meta.get("files", {}).get("classifier.safetensors", "nohash")[:16]
            self._extract = ClassifierFeatures(self.clf, tag, self.assets.profile.eval_batch)
            mu, sigma, _ = reference_stats(self.real, {"use": "probe-fid", "forget_class": self.forget},
                                           self.assets.root / "refstats", self._extract)
            self._ref = (mu, sigma)
        return self._ref


def _raw_weights(meta: dict) -> str:
    return next((f for f in sorted(meta.get("files", {})) if f.startswith("raw/") and f.endswith(".safetensors")), "")


def _user_overrides(spec: CellSpec) -> dict[str, Any]:
    """What the user changed from the method's defaults for this profile (``--set``, ``--steps``)."""
    out = dict(spec.overrides)
    if spec.iters is not None:
        out["iters"] = spec.iters
    return out


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


def _folder_digest(folder: Path) -> str:
    """SHA-256 over the names and contents of a folder's files (the user's training images are part of a cell)."""
    import hashlib

    from bench.hashing import file_sha256

    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()
