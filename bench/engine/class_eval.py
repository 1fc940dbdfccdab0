"""Evaluation of a class-task cell: one draw of forget-class and remaining-class images from the method's
generator (NFE measured), scored by every metric on the same images."""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.assets.classes import BASE_SEED
from bench.core.errors import BenchError
from bench.core.hashing import user_model_hash
from bench.core.measure import Counts, PeakMemory
from bench.engine.outcome import Evaluated, Unlearned
from bench.engine.probes import ClassProbe
from bench.metric import METRICS, EvalContext


class ClassEvaluation:
    def __init__(self, driver, cell, assets) -> None:
        self.driver, self.cell, self.assets = driver, cell, assets

    @staticmethod
    def identity(driver, task, spec) -> dict[str, Any]:
        """What a class cell's identity adds: the user's classifier, and ``--unet`` when it switched the U-Net."""
        out: dict[str, Any] = {}
        if getattr(task, "unet_switch", None):  # only then, so cells of the task's own U-Net keep their ids
            out["unet_arch"] = task.arch
        path = driver.options.classifier
        if path is not None:  # a weights file, or a timm model folder (imagenet-dit)
            if not path.exists():
                raise BenchError(f"--classifier {path}: no such file or folder")
            out["classifier"] = user_model_hash(path)
        return out

    def prepare(self) -> None:
        self.assets.base("raw")
        self.assets.classifier()
        self.driver.warm_up(self._warm_up_step)

    def _warm_up_step(self) -> None:
        a = self.assets
        net = a.base("raw").train()
        batch = getattr(a, "warm_up_batch", None)  # latent assets hold no images in memory
        x, y = batch() if batch is not None else (a.splits.train_x[:8], a.splits.train_y[:8])
        x, y = x.to(a.device), y.to(a.device)
        with self.driver.precision.autocast(a.device):
            a.diffusion.simple_loss(net, x, y).backward()

    def probe(self) -> ClassProbe | None:
        if self.cell.profile.n_probes <= 0:
            return None
        return ClassProbe(self.assets, self.cell.forget, self.cell.spec.seed)

    def unlearned(self, compute) -> Unlearned:
        return compute()

    def evaluate(self, un: Unlearned) -> Evaluated:
        if un.skip_reason:  # the method drew nothing (Retrain on a task the harness cannot train): NaN columns
            values = {k: v for name in self.cell.identity["metrics"] for k, v in METRICS.get(name)().empty().items()}
            a = self.assets
            return Evaluated(values, 0.0, 0.0, 0.0, 0.0, 0.0, row={**self._facts(), "skip_reason": un.skip_reason},
                             config={"base": a.base_meta, "classifier": a.classifier_meta})
        cell, a, p = self.cell, self.assets, self.cell.profile
        forget, device = cell.forget, a.device
        remain = [c for c in range(cell.task.num_classes) if c != forget]
        labels = torch.cat([torch.full((p.n_ua,), forget, dtype=torch.long),
                            torch.tensor([c for c in remain for _ in range(p.n_per_class)], dtype=torch.long)])
        gen = un.generator
        gen.batch_size = p.eval_batch
        t1 = time.perf_counter()
        counts = Counts()
        hooks = counts.attach(gen.net, "model")
        with PeakMemory(device) as mem_sample, self.driver.precision.autocast(device):
            counts.enabled = True
            imgs = gen.sample(labels, seed=cell.spec.seed)
            counts.enabled = False
        for h in hooks:
            h.remove()
        nfe = sum(counts.forward_images.values()) / max(1, len(imgs))
        sample_s = time.perf_counter() - t1

        t2 = time.perf_counter()
        ev = EvalContext(a, gen, forget, cell.cover, cell.spec.seed, imgs[:p.n_ua], imgs[p.n_ua:], labels[p.n_ua:])
        values: dict[str, Any] = {}
        with PeakMemory(device) as mem_eval:
            for name in cell.identity["metrics"]:
                values.update(METRICS.get(name)().compute(ev))
        evaluate_s = time.perf_counter() - t2
        return Evaluated(values, sample_s, evaluate_s, nfe, mem_sample.peak_mb, mem_eval.peak_mb, imgs, labels,
                         list(cell.task.class_names), self._facts(),
                         {"base": a.base_meta, "classifier": a.classifier_meta}, ev.probe_images)

    def _facts(self) -> dict[str, Any]:
        """The row's facts about the evaluation's inputs: sample counts, data, classifier and base model."""
        cell, a, p, forget = self.cell, self.assets, self.cell.profile, self.cell.forget
        clf, base = a.classifier_meta, a.base_meta
        return {"n_ua": p.n_ua, "n_per_class": p.n_per_class,
               "data_source": a.splits.info.get("data_source", ""),
               "data_sha256": a.splits.info.get("data_sha256", ""),
               "classifier_test_acc": clf.get("test_acc"),
               "classifier_forget_recall": clf.get("test_recall", [None] * (forget + 1))[forget],
               "classifier_hash": clf.get("files", {}).get("classifier.safetensors", "")[:16],
               "classifier_source": clf.get("path", "harness"),
               "base_training_seed": BASE_SEED + cell.spec.base_seed,
               "base_hash": (base.get("sha256") or base.get("files", {}).get(_raw_weights(base), ""))[:16],
               "base_steps": base.get("steps"),
               "base_source": base.get("path", "harness") if base.get("kind") == "user" else "harness"}

    def finish(self) -> None:
        """Nothing to clean up: a class cell keeps no state outside its folder."""


def _raw_weights(meta: dict) -> str:
    return next((f for f in sorted(meta.get("files", {})) if f.startswith("raw/") and f.endswith(".safetensors")), "")
