"""The probes the driver runs during unlearning (outside the measured cost): UA, and for class tasks a
probe FID, on fixed noise per cell, so a scheduled probe and a bisection probe score the same draws."""

from __future__ import annotations

import torch

from bench.assets.training import predict
from bench.metric import real_remain
from bench.models.diffusion import from_uint8
from bench.models.generators import Generator
from bench.sd.digits import to_digits_space
from metrics._fidelity import ClassifierFeatures
from metrics.inception import feature_stats, frechet_distance
from metrics.refstats import reference_stats

PROBE_SEED_OFFSET = 1_000_003


class ClassProbe:
    """UA on ``probe_n`` forget-class samples and a probe FID on ``probe_n // 2`` samples per remaining
    class, with noise fixed per cell (offset from the evaluation seed); ``ua`` reuses the same
    forget-class noise. The probe FID always goes through torch-fidelity on the task classifier's
    features (it only draws curves; the table's FID follows ``--fid-backend``). A task with ``probe_fid =
    False`` (ImageNet: a probe FID would sample every one of 999 classes at every probe) is probed for UA only."""

    def __init__(self, assets, forget: int, seed: int) -> None:
        p = assets.profile
        self.n, self.forget, self.seed = p.probe_n, forget, seed + PROBE_SEED_OFFSET
        self.fid = getattr(assets.task, "probe_fid", True)
        remain = [c for c in range(assets.task.num_classes) if c != forget] if self.fid else []
        self.labels = torch.tensor([forget] * p.probe_n + [c for c in remain for _ in range(p.probe_n // 2)])
        self.real = real_remain(assets, forget) if self.fid else None
        self.assets = assets
        self._ref = None
        self.clf = assets.classifier()

    def _ua(self, imgs: torch.Tensor) -> float:
        return float((predict(self.clf, from_uint8(imgs)).argmax(1) != self.forget).float().mean())

    def ua(self, gen: Generator) -> float:
        return self._ua(gen.sample(self.labels[:self.n], seed=self.seed))

    def full(self, gen: Generator) -> dict[str, float]:
        if not self.fid:
            return {"ua": self.ua(gen), "fid": float("nan")}
        imgs = gen.sample(self.labels, seed=self.seed)
        mu, sigma = self._reference()
        g_mu, g_sigma = feature_stats(self._extract(imgs[self.n:]))
        return {"ua": self._ua(imgs[:self.n]), "fid": frechet_distance(g_mu, g_sigma, mu, sigma)}

    def _reference(self):
        """Reference statistics of the classifier features of the real remaining-class images, computed
        once per (images, classifier) and cached on disk for every later cell and probe."""
        if self._ref is None:
            tag = self.assets.classifier_meta.get("files", {}).get("classifier.safetensors", "nohash")[:16]
            self._extract = ClassifierFeatures(self.clf, tag, self.assets.profile.eval_batch)
            mu, sigma, _ = reference_stats(self.real, {"use": "probe-fid", "forget_class": self.forget},
                                           self.assets.root / "refstats", self._extract)
            self._ref = (mu, sigma)
        return self._ref


class DigitsConceptProbe:
    """sd-digits: UA of the first ``probe_rows`` forget-caption requests of the evaluation set, read by the
    digits classifier (the same requests, hence the same initial latents, at every probe)."""

    def __init__(self, requests, classifier, concept: int) -> None:
        self.requests, self.clf, self.concept = requests, classifier, concept

    def ua(self, sampler) -> float:
        imgs = sampler.sample(self.requests)
        return float((predict(self.clf, to_digits_space(imgs)).argmax(1) != self.concept).float().mean())

    def full(self, sampler) -> dict[str, float]:
        return {"ua": self.ua(sampler)}
