"""The prose around a profile's tables: the caption (data, seeds, sampling, how each metric was measured), the
note on non-default settings and the explanations printed under the intervals, spread and per-class tables.

One place for both the Markdown/LaTeX output (``views``) and the HTML page (``html``), so they say the same.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.reports.format import _md_cell, _missing, _num, _parse_json, _short_value, _strs, unavailable_notes
from bench.reports.groups import _label_order, _prepare

SPREAD_EXPLAIN = ("each entry is sd over base models / sd over unlearning seeds: the sample sd (ddof=1) of the "
                  "per-base-model means, and the root mean of the within-base-model sample variances over "
                  "unlearning seeds (base models with ≥ 2 seeds; pooled over forget classes); – where not computable")
INTERVALS_EXPLAIN = ("95% confidence intervals of the mean, mean ± t_{0.975, n−1}·sd/√n (Student t, sample sd, n "
                     "= the row's cells with a value; not clipped to a metric's range); – with fewer than 3 values, "
                     "(k/n) when only k of n cells have the value")
BY_CLASS_EXPLAIN = ("each entry is UA ↑ / FID ↓, the means over the row's cells (base models × unlearning seeds) "
                    "with that forget class; – where there are none")


def _uniq(df: pd.DataFrame, key: str, fmt: str = "{}") -> str:
    """The distinct values of ``key`` over ``df`` ('?' if none), formatted, joined with ' / '."""
    if key not in df:
        return "?"
    vals = []
    for v in df[key]:
        if _missing(v):
            continue
        if fmt == "{:d}":
            f = _num(v)
            v = "?" if math.isnan(f) else int(f)
        s = fmt.format(v) if v != "?" else "?"
        if s not in vals:
            vals.append(s)
    return " / ".join(vals) or "?"


def guidance_text(r) -> str:
    """``w=0.5`` in the class harness's "(1+w)" form, ``s=7.5`` for concept rows (SD's form)."""
    if r.get("guidance_form") == "s":
        if r.get("sampler") == "one-step":  # SFD/PECKER on SD: the teacher's guidance is distilled into G
            return "distilled"
        return f"s={r.get('guidance_s', '?')}"
    return f"w={r.get('guidance_w', '?')}"


def _sampler_one(r: pd.Series) -> str:
    if r.get("status") == "skipped":
        return "not sampled (skipped)"
    steps = _num(r.get("sampler_steps"))
    s = "?" if math.isnan(steps) else int(steps)
    return f"{r.get('sampler', '?')}, {s} step{'s' * (s != 1)}, guidance {guidance_text(r)}"


def _sampler_text(df: pd.DataFrame) -> str:
    """The sampling settings of a profile's rows: the most common one, then the rows that differ."""
    if not {"sampler", "sampler_steps", "guidance_w"} <= set(df.columns):
        return "?"
    per_label = {label: _sampler_one(df[df["label"] == label].iloc[0]) for label in _label_order(df)}
    counts: dict[str, int] = {}
    for s in per_label.values():
        counts[s] = counts.get(s, 0) + 1
    main = max(counts, key=lambda s: (counts[s], -list(counts).index(s)))
    others: dict[str, list[str]] = {}
    for label, s in per_label.items():
        if s != main:
            others.setdefault(s, []).append(label)
    tail = "; ".join(f"{', '.join(labels)}: {s}" for s, labels in others.items())
    return main + (f" (except {tail})" if tail else "")


def _caption(task: str, profile: str, df: pd.DataFrame) -> str:
    df = _prepare(df)

    def values(col: str) -> list:
        return sorted(int(v) for v in df[col].unique())

    if "kind" in df and (df["kind"] == "concept").any():
        return _concept_caption(task, profile, df, values)

    return (f"{task}, profile {profile}, data {_uniq(df, 'dataset_variant')}: forget class(es) "
            f"{values('forget_class')}, base models (base seeds) {values('base_seed')}, unlearning seeds "
            f"{values('seed')}; mean ± sample sd over a row's cells (95% intervals: Student t, rows with ≥ 3 "
            f"values). Sampling: {_sampler_text(df)}. UA from {_uniq(df, 'n_ua', '{:d}')} forget-class samples "
            f"scored by the task classifier (test acc {_uniq(df, 'classifier_test_acc', '{:.3f}')}); retain acc "
            f"from {_uniq(df, 'n_per_class', '{:d}')} samples per remaining class; FID on "
            f"{_uniq(df, 'fid_features')} features ({_uniq(df, 'fid_backend')}), {_uniq(df, 'fid_n_gen', '{:d}')} "
            f"generated vs {_uniq(df, 'fid_n_ref', '{:d}')} real remaining-class images; times on "
            f"{_uniq(df, 'device')}")


def _overrides(df: pd.DataFrame) -> list[tuple[str, str]]:
    ov = _strs(df, "config_overrides")
    parts = []
    for label in _label_order(df):
        sets = {s for s in ov[df["label"] == label] if s not in ("", "{}")}
        for s in sorted(sets):
            d = _parse_json(s)
            parts.append((label, ", ".join(f"{k}={_short_value(v)}" for k, v in d.items()) if d is not None else s))
    return parts


def _override_notes(df: pd.DataFrame) -> str:
    parts = [f"**{_md_cell(label)}**: {_md_cell(text)}" for label, text in _overrides(df)]
    return ("Non-default settings (`--set`, `--steps`): " + "; ".join(parts) + "\n") if parts else ""


def _concept_caption(task: str, profile: str, df: pd.DataFrame, values) -> str:
    """Concept tasks: which concepts, how images were drawn, which sets and metrics, and what is n/a."""
    sets: list[str] = []
    for text in _strs(df, "eval_sets"):
        try:
            listed = json.loads(text)
        except ValueError:
            listed = []
        for es in listed if isinstance(listed, list) else []:
            item = f"{es.get('use')} {es.get('name')} ({es.get('rows')} rows, {es.get('images')} images)"
            if item not in sets:
                sets.append(item)
    concepts = sorted(set(_strs(df, "concept")) - {""})
    parts = [f"{task}, profile {profile}: concept(s) {', '.join(concepts) or values('forget_class')}, base models "
             f"{_uniq(df, 'base_hash')}, unlearning seeds {values('seed')}; mean ± sample sd over a row's cells. "
             f"Sampling: {_sampler_text(df)}. Evaluation sets: {'; '.join(sets) or '?'}."]
    if "ua" in df and pd.to_numeric(df["ua"], errors="coerce").notna().any() and "concept_acc_note" not in df:
        parts.append(f"UA and retain acc from the {_uniq(df, 'fid_features')} (test acc "
                     f"{_uniq(df, 'classifier_test_acc', '{:.3f}')}); FID on its features against the real "
                     f"remaining images.")
    if "nudity_detector" in df:
        parts.append(f"Nudity: {_uniq(df, 'nudity_detector')} at score ≥ {_uniq(df, 'nudity_threshold')} "
                     f"(NudeNet v3: not comparable with the NudeNet v2 numbers of ESD, SA, SFD and I2P).")

    notes = sorted(set(unavailable_notes(df).values()))
    if notes:
        parts.append("n/a: " + "; ".join(notes) + ".")
    parts.append(f"Times on {_uniq(df, 'device')}.")
    return " ".join(parts)
