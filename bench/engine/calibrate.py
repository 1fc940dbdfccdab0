"""``bench pretrain --curve``: how the base model's quality depends on its pretraining length.

For each length, a base model is trained with the task's recipe (only ``steps`` changed; the
learning-rate schedule runs over the whole length) for each base seed, and evaluated exactly as
the Original row of a table (the profile's sampler, sample counts and metrics). Optionally FT is
run from it: if a short fine-tune on the remaining classes still improves FID or retained accuracy,
the base model is not converged and cannot anchor the quality columns.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.assets.training import predict
from bench.core.hashing import atomic_write_text
from bench.core.store import save_png
from bench.engine.driver import CellSpec, Driver
from bench.engine.options import Options
from bench.metric import EvalContext
from bench.models.diffusion import from_uint8
from bench.models.generators import DiffusionSampler
from bench.tasks import Profile, Task
from metrics.fid import FID

COLUMNS = ["ua", "retain_acc", "fid", "kid", "precision", "recall"]


def base_curve(task: Task, profile: str, lengths: list[int], base_seeds: list[int], options: Options,
               with_ft: bool = True) -> pd.DataFrame:
    """One row per (length, base seed, method) with the evaluation metrics and the training time; the cells of
    each length go to ``options.out / steps-<length>``."""
    rows = []
    for steps in lengths:
        prof = task.profile(profile)
        prof = dataclasses.replace(prof, pretrain=dataclasses.replace(prof.pretrain, steps=int(steps)), n_probes=0)
        t = dataclasses.replace(task, profiles={**task.profiles, profile: prof})
        driver = Driver(options.replace(out=options.out / f"steps-{steps}", pretrain_steps=None),
                        log=lambda m: None, tasks=[t])
        for b in base_seeds:
            for method in ("original", "ft") if with_ft else ("original",):
                print(f"base curve: {steps} steps, base seed {b}, {method}", file=sys.stderr)
                row = driver.run(CellSpec(t.name, method, t.default_forget, 0, profile, base_seed=b))
                meta = driver.assets(t, profile, b).base_meta
                rows.append({"pretrain_steps": steps, "base_seed": b, "method": method,
                             **{k: row.get(k) for k in COLUMNS}, "ft_iters": row["iters"] if method == "ft" else 0,
                             "pretrain_s": meta.get("train_seconds"), "lr_schedule": prof.pretrain.lr_schedule})
    return pd.DataFrame(rows)


def write_curve(df: pd.DataFrame, folder: Path, title: str, suffix: str = "") -> str:
    """``base_curve<suffix>.csv``, ``.md`` (mean ± sd over base seeds) and ``.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"base_curve{suffix}.csv", df.to_csv(index=False))
    lines = [f"# {title}", "", "| pretraining steps | model | UA | retain acc | FID | KID | pretrain time (s) |",
             "|---|---|---|---|---|---|---|"]
    for (steps, method), g in df.groupby(["pretrain_steps", "method"], sort=True):
        def ms(col: str, fmt: str, g=g) -> str:
            v = pd.to_numeric(g[col], errors="coerce").dropna()
            sd = f" ± {fmt.format(v.std(ddof=1))}" if len(v) > 1 else ""
            return "–" if v.empty else fmt.format(v.mean()) + sd

        label = "Original" if method == "original" else f"FT {int(g['ft_iters'].iloc[0])} iters from it"
        lines.append(f"| {steps} | {label} | {ms('ua', '{:.3f}')} | {ms('retain_acc', '{:.3f}')} | "
                     f"{ms('fid', '{:.3f}')} | {ms('kid', '{:.4f}')} | {ms('pretrain_s', '{:.0f}')} |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(folder / f"base_curve{suffix}.md", md)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, style in (("original", "o-"), ("ft", "s--")):
        g = df[df["method"] == method]
        if g.empty:
            continue
        agg = g.groupby("pretrain_steps")[["retain_acc", "fid"]].agg(["mean", "std"])
        for ax, col in zip(axes, ("retain_acc", "fid")):
            ax.errorbar(agg.index, agg[(col, "mean")], yerr=agg[(col, "std")].fillna(0), fmt=style, capsize=3,
                        label="Original" if method == "original" else "FT from it")
    lengths = sorted(df["pretrain_steps"].unique())
    for ax, yl in zip(axes, ("retained accuracy ↑", "FID (task-classifier features) ↓")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("pretraining steps")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, folder / f"base_curve{suffix}.png", dpi=110)
    return md


def guidance_sweep(assets, weights_list: tuple[str, ...], ws: list[float], n_per_class: int, seed: int,
                   forget: int) -> pd.DataFrame:
    """``bench pretrain --guidance-sweep``: the base model sampled with the profile's sampler at several
    guidance weights, scored by the task classifier (per-class accuracy, the forget class's UA and the
    retained accuracy over the other classes): the calibration rule asks for UA <= 0.2 and retained
    accuracy >= 0.8 before any method is compared."""
    p, k = assets.profile, assets.task.num_classes
    clf = assets.classifier()
    labels = torch.arange(k).repeat_interleave(n_per_class)
    rows = []
    for weights in weights_list:
        net = assets.base(weights)
        for w in ws:
            imgs = DiffusionSampler(net, assets.diffusion, p.sampler_steps, w, p.eta, assets.image_shape,
                                    batch_size=p.eval_batch, progress=f"{weights} weights, w={w:g}"
                                    ).sample(labels, seed=seed)
            pred = predict(clf, from_uint8(imgs), batch=p.eval_batch).argmax(1)
            acc = [float((pred[labels == c] == c).float().mean()) for c in range(k)]
            rest = [a for c, a in enumerate(acc) if c != forget]
            rows.append({"weights": weights, "w": w, "ua_forget": 1 - acc[forget],
                         "retain_acc": sum(rest) / len(rest), **{f"acc_{c}": a for c, a in enumerate(acc)}})
    return pd.DataFrame(rows)


def write_guidance_sweep(df: pd.DataFrame, folder: Path, title: str) -> str:
    lines = [f"# {title}", "", "| weights | w | UA (forget class) | retain acc | per-class accuracy |",
             "|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        per = " ".join(f"{r[c]:.2f}" for c in sorted(k for k in r if k.startswith("acc_")))
        lines.append(f"| {r['weights']} | {r['w']:g} | {r['ua_forget']:.3f} | {r['retain_acc']:.3f} | {per} |")
    text = "\n".join(lines) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "guidance_sweep.md", text)
    return text


def fid_protocol_delta(assets, paper: Profile, count_n: int, sampler_n: int, forget: int, fast_seeds: int = 3,
                       progress=print) -> pd.DataFrame:
    """``bench pretrain --fid-delta``: how far the profile's FID is from the paper protocol's on one base
    model, split into its two causes. The weights the Original row evaluates are sampled for the
    remaining classes and scored by the profile's FID metric against the same reference set:

    * the profile's sampler at the profile's count per class (``fast_seeds`` seeds): the reported FID;
    * the profile's sampler at ``count_n`` per class (the paper's count): the small-sample bias;
    * the profile's and the paper's sampler (its steps, eta and guidance) at ``sampler_n`` per class:
      the sampler's share.

    The paper protocol's FID is estimated as FID(profile sampler, ``count_n``) plus the sampler's share
    (exact when ``sampler_n == count_n``; a smaller ``sampler_n`` keeps 1000-step sampling affordable).
    Images are drawn with per-image counter noise, so the smaller sets are subsets of the larger."""
    p, k = assets.profile, assets.task.num_classes
    weights = assets.task.weights_evaluated
    net = assets.base(weights)
    remain = [c for c in range(k) if c != forget]
    mine = ("profile", p.sampler_steps, p.eta, p.guidance)
    theirs = ("paper", paper.sampler_steps, paper.eta, paper.guidance)
    # a count that coincides with another is sampled once (seed 0's images are the same)
    runs = list(dict.fromkeys([*((*mine, p.n_per_class, s) for s in range(fast_seeds)), (*mine, count_n, 0),
                               (*mine, sampler_n, 0), (*theirs, sampler_n, 0)]))
    rows = []
    for name, steps, eta, w, n, seed in runs:
        labels = torch.tensor(remain).repeat_interleave(n)
        t0 = time.perf_counter()
        imgs = DiffusionSampler(net, assets.diffusion, steps, w, eta, assets.image_shape, weights,
                                batch_size=p.eval_batch, progress=f"{name} sampler, {n}/class, seed {seed}"
                                ).sample(labels, seed=seed)
        sample_s = time.perf_counter() - t0
        ev = EvalContext(assets, None, forget, forget, seed, imgs[:0], imgs, labels)
        out = FID().compute(ev)
        rows.append({"sampler": name, "steps": steps, "eta": eta, "w": w, "n_per_class": n, "seed": seed,
                     "fid": out["fid"], "kid": out.get("kid", float("nan")), "sample_seconds": sample_s,
                     "fid_features": out["fid_features"], "fid_n_ref": out["fid_n_ref"], "weights": weights})
        progress(f"fid delta: {name} sampler ({steps} steps, eta {eta:g}), {n} per class, seed {seed}: "
                 f"FID {out['fid']:.3f} ({sample_s:.0f} s sampling)")
    return pd.DataFrame(rows)


def fid_delta_summary(df: pd.DataFrame, profile_n: int, count_n: int) -> dict[str, Any]:
    """The differences ``fid_delta.md`` states, from :func:`fid_protocol_delta`'s rows (``profile_n``: the
    profile's count per class, ``count_n``: the paper's).

    Each part is a difference between two image sets drawn with the SAME seed (per-image noise, so the smaller
    set is a subset of the larger), listed per seed that has both; its mean over those seeds is compared with
    ``noise``, the range of the reported FID over its seeds. A part no larger than that range is "within seed
    noise", and the paper protocol's FID is estimated only when the whole gap is larger than it (with one
    seed the range is unknown: NaN, and nothing is estimated)."""
    prof, paper = df[df.sampler == "profile"], df[df.sampler == "paper"]
    sampler_n = int(paper.n_per_class.iloc[0])

    def at(frame: pd.DataFrame, n: int) -> dict[int, float]:
        sel = frame[frame.n_per_class == n]
        return dict(zip(sel.seed.astype(int), sel.fid.astype(float)))

    reported = at(prof, profile_n)
    noise = max(reported.values()) - min(reported.values()) if len(reported) > 1 else math.nan
    counted = at(prof, count_n)
    bias = {s: reported[s] - counted[s] for s in sorted(set(reported) & set(counted))}
    mine, theirs = at(prof, sampler_n), at(paper, sampler_n)
    sampler = {s: theirs[s] - mine[s] for s in sorted(set(mine) & set(theirs))}
    mean_reported = sum(reported.values()) / len(reported)
    mean_bias, mean_sampler = (sum(v.values()) / len(v) if v else math.nan for v in (bias, sampler))
    # the gap per seed: the paper's count with the paper's sampler, minus the profile's own number
    gap = {k: sampler[k] - bias[k] for k in sorted(set(bias) & set(sampler))}
    delta = sum(gap.values()) / len(gap) if gap else math.nan

    def within(x: float) -> bool:
        return not math.isfinite(noise) or abs(x) <= noise

    return {"reported": mean_reported, "reported_min": min(reported.values()),
            "reported_max": max(reported.values()), "seeds": len(reported), "noise": noise,
            "count_n": count_n, "sampler_n": sampler_n,
            "small_sample_bias": mean_bias, "small_sample_bias_by_seed": bias,
            "sampler_effect": mean_sampler, "sampler_effect_by_seed": sampler,
            "bias_within_noise": within(mean_bias), "sampler_within_noise": within(mean_sampler),
            "delta": delta, "delta_by_seed": gap, "delta_within_noise": within(delta),
            "paper_estimate": math.nan if within(delta) else mean_reported + delta}


def _by_seed(parts: dict[int, float]) -> str:
    return ", ".join(f"seed {s}: {v:+.3f}" for s, v in parts.items())


def write_fid_delta(df: pd.DataFrame, profile_n: int, count_n: int, folder: Path, title: str) -> str:
    """``fid_delta.{csv,md}``: every measurement, then each part per seed beside the seeds' own spread."""
    s = fid_delta_summary(df, profile_n, count_n)
    lines = [f"# {title}", "", "| sampler | steps | eta | w | per class | seed | FID | KID | sampling s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['eta']:g} | {r['w']:g} | {r['n_per_class']} | "
                     f"{r['seed']} | {r['fid']:.3f} | {r['kid']:.4f} | {r['sample_seconds']:.0f} |")
    noise = "unknown with one seed" if not math.isfinite(s["noise"]) else f"{s['noise']:.3f}"

    def verdict(flag: bool) -> str:
        return "within seed noise" if flag else "larger than the seeds' range"

    lines += ["",
              f"- reported by the profile ({profile_n} per class): FID {s['reported']:.3f}, mean of {s['seeds']} "
              f"seeds (range {s['reported_min']:.3f}-{s['reported_max']:.3f}: seed noise {noise})",
              f"- small-sample bias ({profile_n} minus {s['count_n']} per class, profile sampler, same seed): "
              f"{_by_seed(s['small_sample_bias_by_seed'])}; {verdict(s['bias_within_noise'])}",
              f"- sampler effect (paper sampler minus profile sampler, {s['sampler_n']} per class, same seed): "
              f"{_by_seed(s['sampler_effect_by_seed'])}; {verdict(s['sampler_within_noise'])}"]
    if s["delta_within_noise"]:
        lines.append(f"- the gap (sampler effect minus small-sample bias, {_by_seed(s['delta_by_seed'])}) is within "
                     "seed noise: the paper protocol's FID is not estimated from it; measure more seeds or sample "
                     "the paper's sampler at the paper's count")
    else:
        lines.append(f"- the gap (sampler effect minus small-sample bias): {_by_seed(s['delta_by_seed'])}; paper "
                     f"protocol's FID, estimated: {s['paper_estimate']:.3f}; minus the reported FID: "
                     f"**{s['delta']:+.3f}**")
    lines.append(f"- features: {df.fid_features.iloc[0]}; weights: {df.weights.iloc[0]}; reference set: "
                 f"{int(df.fid_n_ref.iloc[0])} real images of the remaining classes")
    text = "\n".join(lines) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "fid_delta.md", text)
    atomic_write_text(folder / "fid_delta.csv", df.to_csv(index=False))
    return text
