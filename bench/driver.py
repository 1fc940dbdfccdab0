"""The driver: runs one cell (task, method, forget class, seed, resolved config) and measures it.

Phases: prepare (assets: base model, classifier), unlearn (the method, with counted optimizer steps,
backward passes and forward evaluations, peak memory, probes excluded from time), sample (one draw
of forget-class and remaining-class images, NFE measured), evaluate (every metric on those samples).
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.assets import Assets
from bench.context import UnlearnContext
from bench.envinfo import environment
from bench.errors import BenchError
from bench.generators import Generator
from bench.hashing import content_hash
from bench.measure import Counts, PeakMemory, Stopwatch
from bench.method import METHODS, resolve_config
from bench.metric import METRICS, EvalContext
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_metrics() -> list[str]:
    return [n for n in METRICS.names() if METRICS.get(n).default]


class Driver:
    def __init__(self, out: Path, device: str = "cpu", cache_root: Path | None = None, progress: bool = True,
                 log=None, task_override: Task | None = None) -> None:
        self.out = Path(out)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda was requested but no CUDA device is available")
        self.cache_root = cache_root
        self.progress = progress
        self._assets: dict[tuple[str, str], Assets] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._task_override = task_override

    def get_task(self, name: str) -> Task:
        if self._task_override is not None and self._task_override.name == name:
            return self._task_override
        return get_task(name)

    def assets(self, task: Task, profile: str) -> Assets:
        key = (task.name, profile)
        if key not in self._assets:
            self._assets[key] = Assets(task, task.profile(profile), self.device, self.cache_root)
        return self._assets[key]

    # --- cell identity -----------------------------------------------------------------------
    def plan(self, spec: CellSpec) -> tuple[Any, dict[str, Any], str]:
        """Resolve the method config and the cell id; raises BenchError on user mistakes."""
        task = self.get_task(spec.task)
        if not 0 <= spec.forget_class < task.num_classes:
            raise BenchError(f"--forget-class must be in 0..{task.num_classes - 1} for task {task.name!r}, "
                             f"got {spec.forget_class}")
        profile = task.profile(spec.profile)
        cls = METHODS.get(spec.method)
        cfg = resolve_config(cls, task.name, profile.name, spec.overrides, spec.iters, task, profile)
        metric_names = sorted(set(default_metrics()) | set(spec.metrics))
        identity = {"task": task.name, "variant": task.dataset_variant, "method": cls.name,
                    "method_version": cls.version, "forget_class": spec.forget_class,
                    "cover_class": task.cover_class(spec.forget_class), "seed": spec.seed,
                    "profile": dataclasses.asdict(profile), "config": dataclasses.asdict(cfg),
                    "metrics": metric_names, "device": self.device.type}
        cell_id = content_hash(identity, 10)
        name = f"{cls.name}-f{spec.forget_class}-s{spec.seed}-{profile.name}-{cell_id}"
        return cfg, identity, name

    def run(self, spec: CellSpec, resume: bool = True) -> dict[str, Any]:
        cfg, identity, name = self.plan(spec)
        folder = cell_dir(self.out, spec.task, name)
        if resume and is_complete(folder):
            self._log(f"skip {name}: already complete")
            return load_row(folder)
        return self._run(spec, cfg, identity, name, folder)

    # --- one cell ----------------------------------------------------------------------------
    def _run(self, spec: CellSpec, cfg: Any, identity: dict, name: str, folder: Path) -> dict[str, Any]:
        task = self.get_task(spec.task)
        cls = METHODS.get(spec.method)
        method = cls(cfg)
        t0 = time.perf_counter()
        assets = self.assets(task, spec.profile)
        assets.base("raw")
        assets.classifier()
        prepare_s = time.perf_counter() - t0

        forget, cover = spec.forget_class, task.cover_class(spec.forget_class)
        counts, watch = Counts(), Stopwatch(self.device)
        probe_fn = self._make_probe(assets, forget, spec.seed)
        ctx = UnlearnContext(assets, forget, cover, spec.seed, counts, watch, probe_fn,
                             n_probes=assets.profile.n_probes, progress=self.progress, label=name.rsplit("-", 1)[0])
        seed_everything(spec.seed)
        with PeakMemory(self.device) as mem, counts.counting_optimizer_steps():
            counts.enabled = True
            watch.start()
            generator = method.unlearn(ctx)
            unlearn_s = watch.stop()
            counts.enabled = False
        if not isinstance(generator, Generator):
            raise TypeError(f"method {cls.name!r} returned {type(generator).__name__}, not a Generator")
        unlearn_forward = dict(counts.forward_images)

        # --- sample ---
        p = assets.profile
        t1 = time.perf_counter()
        counts.forward_images.clear()
        counts.enabled = True
        forget_labels = torch.full((p.n_ua,), forget, dtype=torch.long)
        remain_labels = torch.tensor([c for c in ctx.remain_classes for _ in range(p.n_per_class)], dtype=torch.long)
        imgs = generator.sample(torch.cat([forget_labels, remain_labels]), seed=spec.seed)
        counts.enabled = False
        n_imgs = max(1, len(imgs))
        nfe = sum(counts.forward_images.values()) / n_imgs
        sample_s = time.perf_counter() - t1
        ctx.close()

        # --- evaluate ---
        t2 = time.perf_counter()
        ev = EvalContext(assets, generator, forget, cover, spec.seed, imgs[:p.n_ua], imgs[p.n_ua:], remain_labels)
        values: dict[str, Any] = {}
        for mname in identity["metrics"]:
            values.update(METRICS.get(mname)().compute(ev))
        evaluate_s = time.perf_counter() - t2

        ttt_s, ttt_steps = time_to_target(ctx.curve, p.ua_target)
        expected = method.expected_steps()
        if counts.optimizer_steps != expected:
            self._log(f"warning: {name}: the driver counted {counts.optimizer_steps} optimizer steps, the budget "
                      f"says {expected} ({cfg.iters} iterations x {cls.steps_per_iter})")
        env = environment(self.device)
        row = {
            "method": cls.name, "task": task.name, "forget_class": forget, "cover_class": cover,
            "seed": spec.seed, "profile": p.name, "status": cls.status, "method_version": cls.version,
            "output": cls.output, "data_free": cls.data_free, "reference_row": cls.reference_row,
            **values,
            "iters": int(cfg.iters), "grad_steps": counts.optimizer_steps, "expected_steps": expected,
            "backward_passes": counts.backward_passes,
            "forward_images": int(sum(unlearn_forward.values())),
            "nfe": nfe, **generator.describe(),
            "prepare_s": prepare_s, "setup_s": ctx.setup_seconds if ctx.setup_seconds is not None else unlearn_s,
            "unlearn_s": unlearn_s, "sample_s": sample_s, "evaluate_s": evaluate_s,
            "peak_mem_mb": mem.peak_mb, "peak_mem_kind": mem.kind,
            "ua_target": p.ua_target, "time_to_target_s": ttt_s, "time_to_target_steps": ttt_steps,
            "n_ua": p.n_ua, "n_per_class": p.n_per_class,
            "dataset_variant": task.dataset_variant,
            "classifier_test_acc": assets.classifier_meta.get("test_acc"),
            "classifier_forget_recall": assets.classifier_meta.get("test_recall", [None] * (forget + 1))[forget],
            "classifier_hash": assets.classifier_meta.get("files", {}).get("classifier.safetensors", "")[:16],
            "base_hash": assets.base_meta.get("files", {}).get("raw/diffusion_pytorch_model.safetensors", "")[:16],
            "base_steps": assets.base_meta.get("steps"),
            "config_hash": content_hash(dataclasses.asdict(cfg), 12), "cell_id": name.rsplit("-", 1)[1],
            "cell": name, "git": env["git"], "device": env["device"], "v_torch": env["v_torch"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _check_finite(row, name, self._log)
        config = {"identity": identity, "method": cls.describe(), "config": dataclasses.asdict(cfg),
                  "environment": env, "base": assets.base_meta, "classifier": assets.classifier_meta,
                  "counts": {"forward_images_by_net": unlearn_forward,
                             "backward_by_net": dict(counts.backward_by_net)}}
        write_cell(folder, row, config, ctx.curve, ctx.logs, imgs, torch.cat([forget_labels, remain_labels]))
        return row

    def _make_probe(self, assets: Assets, forget: int, seed: int):
        p = assets.profile
        if p.n_probes <= 0:
            return None
        from bench.diffusion import from_uint8
        from bench.train import predict
        from metrics._fidelity import torch_fidelity_metrics

        remain = [c for c in range(assets.task.num_classes) if c != forget]
        labels = torch.tensor([forget] * p.probe_n + [c for c in remain for _ in range(p.probe_n // 2)])
        real = assets.splits.train_x[assets.splits.train_y != forget]
        real_u8 = ((real.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        clf = assets.classifier()

        def probe(gen: Generator) -> dict[str, float]:
            imgs = gen.sample(labels, seed=seed + PROBE_SEED_OFFSET)
            pf = predict(clf, from_uint8(imgs[:p.probe_n])).argmax(1)
            fid = torch_fidelity_metrics(imgs[p.probe_n:], real_u8, clf, "probe", kid=False, prc=False)["fid"]
            return {"ua": float((pf != forget).float().mean()), "fid": fid}

        return probe


def time_to_target(curve: list[dict], target: float) -> tuple[float, float]:
    """Unlearning seconds and optimizer steps at the first probe whose UA reaches ``target``."""
    for point in curve:
        if point.get("ua", -1) >= target:
            return float(point["unlearn_s"]), float(point["grad_steps"])
    return math.nan, math.nan


def _check_finite(row: dict, name: str, log) -> None:
    core = ("ua", "retain_acc", "fid", "unlearn_s", "nfe", "peak_mem_mb")  # others may be NaN by definition
    bad = [k for k in core if isinstance(row.get(k), float) and math.isnan(row[k])]
    if bad:
        log(f"warning: {name}: non-finite values for {', '.join(bad)}")
