"""FID, KID and precision/recall of remaining-class samples against real remaining-class images."""

from __future__ import annotations

from bench.metric import EvalContext, Metric, register_metric
from metrics._fidelity import clean_fid, torch_fidelity_metrics

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
        clf = ev.assets.classifier()
        tag = ev.assets.classifier_meta.get("files", {}).get("classifier.safetensors", "nohash")[:12]
        if backend == "torch-fidelity":
            out = torch_fidelity_metrics(ev.remain_images, ref, clf, tag)
        elif backend == "clean-fid":
            out = clean_fid(ev.remain_images, ref, clf)
        else:
            raise ValueError(f"unknown FID backend {backend!r}; choose from {BACKENDS}")
        return {**out, "fid_backend": backend, "fid_features": ev.assets.task.fid_features,
                "fid_n_gen": len(ev.remain_images), "fid_n_ref": len(ref)}
