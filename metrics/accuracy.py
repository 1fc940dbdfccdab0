"""Classifier-based metrics: unlearning accuracy (UA) and retained-class accuracy."""

from __future__ import annotations

import torch

from bench.metric import EvalContext, Metric, register_metric


@register_metric("ua")
class UnlearningAccuracy(Metric):
    directions = {"ua": True, "acc_f": False, "entropy_f": None, "p_forget": False}
    definition = ("UA = 1 - fraction of forget-class samples the task classifier assigns to the forget "
                  "class (protocol.md §4.2); also acc_f, mean softmax entropy and mean p(c_f)")

    def compute(self, ev: EvalContext) -> dict[str, float]:
        p = ev.probs("forget")
        if len(p) == 0:
            return {"ua": float("nan"), "acc_f": float("nan"), "entropy_f": float("nan"), "p_forget": float("nan")}
        acc_f = float((p.argmax(1) == ev.forget_class).float().mean())
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
        return {"ua": 1.0 - acc_f, "acc_f": acc_f, "entropy_f": entropy,
                "p_forget": float(p[:, ev.forget_class].mean())}


@register_metric("retain_acc")
class RetainAccuracy(Metric):
    directions = {"retain_acc": True}
    definition = ("fraction of generated samples of each remaining class that the classifier assigns to "
                  "the requested class, averaged over the remaining classes")

    def compute(self, ev: EvalContext) -> dict[str, float]:
        pred = ev.probs("remain").argmax(1)
        per_class = [float((pred[ev.remain_labels == c] == c).float().mean())
                     for c in torch.unique(ev.remain_labels).tolist()]
        return {"retain_acc": sum(per_class) / len(per_class) if per_class else float("nan")}
