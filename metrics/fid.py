"""FID, KID and precision/recall of remaining-class samples against real remaining-class images."""

from __future__ import annotations

import torch

from bench.metric import EvalContext, Metric, register_metric
from metrics._fidelity import clean_fid, torch_fidelity_metrics
from metrics.inception import InceptionFeatures, fid_clean, fid_torch_fidelity, find_inception
from metrics.refstats import reference_stats

BACKENDS = ("torch-fidelity", "clean-fid")


@register_metric("fid")
class FID(Metric):
    directions = {"fid": False, "kid": False, "precision": True, "recall": True}
    definition = ("Frechet distance between generated remaining-class samples and the real remaining-class "
                  "training images, on the task classifier's penultimate features (fid_features column); "
                  "KID and precision/recall (k=3) from torch-fidelity on the same features")
    version = "1"

    def compute(self, ev: EvalContext) -> dict:
        backend = ev.assets.profile.fid_backend
        ref = ev.real_remain()
        if fid_features(ev.assets) == "inception-v3":
            return inception_fid(ev, ref, backend)
        clf = ev.assets.classifier()
        tag = ev.assets.classifier_meta.get("files", {}).get("classifier.safetensors", "nohash")[:12]
        if backend == "torch-fidelity":
            out = torch_fidelity_metrics(ev.remain_images, ref, clf, tag)
        elif backend == "clean-fid":
            out = clean_fid(ev.remain_images, ref, clf)
        else:
            raise ValueError(f"unknown FID backend {backend!r}; choose from {BACKENDS}")
        return {**out, "fid_backend": backend, "fid_features": fid_features(ev.assets),
                "fid_n_gen": len(ev.remain_images), "fid_n_ref": len(ref)}


def fid_features(assets) -> str:
    return assets.profile.fid_features or assets.task.fid_features


def inception_fid(ev: EvalContext, ref, backend: str) -> dict:
    """Inception-v3 FID (``legacy_tensorflow`` resizing) against reference statistics computed once per
    (images, weights, mode) and cached under ``<cache>/<task>/refstats-*``."""
    a = ev.assets
    gen = ev.remain_images
    if a.profile.paper_compat:
        gen, ref = paper_compat_images(gen), paper_compat_images(ref)
    src = find_inception(getattr(a, "inception_weights", None))
    batch = 200 if a.device.type == "cuda" else 16
    ext = InceptionFeatures(src, a.device, batch, mode="legacy_tensorflow")
    mu, sigma, meta = reference_stats(ref, {"use": "fid-remaining", "forget_class": ev.forget_class,
                                            "ref_per_class": a.profile.fid_ref_per_class,
                                            "paper_compat": a.profile.paper_compat},
                                      a.root / "refstats", ext)
    if backend == "clean-fid":
        fid = fid_clean(gen, (mu, sigma, meta), src, "legacy_tensorflow", a.device, batch)
    else:
        fid = fid_torch_fidelity(gen, (mu, sigma, meta), src, a.device, batch)
    return {"fid": fid, "fid_backend": backend, "fid_features": "inception-v3", "paper_compat": a.profile.paper_compat,
            "inception_weights": src.short(), "inception_sha256": src.sha256[:16],
            "fid_n_gen": len(ev.remain_images), "fid_n_ref": len(ref)}


def paper_compat_images(images):
    """What the SA/SalUn/SFR-on pipeline hands Inception: every image stretched to its own min..max
    (``save_image(normalize=True)``, quantised with floor(255 v + 0.5)), then read back as BGR."""
    x = images.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-5)
    x = torch.floor(255.0 * x + 0.5).clamp(0, 255).to(torch.uint8)
    return x.flip(1) if x.shape[1] == 3 else x
