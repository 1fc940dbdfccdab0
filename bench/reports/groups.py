"""Which cells form a table row, the order of the rows and the metric columns a table shows.

A table row is one method with one resolved configuration and one code version: cells are grouped
by (method, ``config_hash``, ``harness_code``, ``method_code``), so the ± of a row is over seeds
(base models, unlearning seeds) and forget classes only, never over configurations. A method's
default group keeps the method's name; a ``--set``/``--steps`` group is labelled with the settings
that differ (``salun (lr=1e-05)``), and groups that differ only by code with the code hash
(``salun [code 3f2a1c]``), which also raises a warning (``tables.code_warnings``): such a folder mixes
code versions. ``_prepare`` adds the derived columns (``label``, peak memory) that the tables, captions
and plots rely on.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.reports.format import _arrow, _num, _parse_json, _short_value, _strs

PEAK = "_peak_mem_unlearn"  # derived: peak_mem_unlearn_mb, or the older peak_mem_mb

# (column, header, higher_is_better or None, format)
COLUMNS = [
    ("ua", "UA", True, "{:.3f}"),
    ("retain_acc", "retain acc", True, "{:.3f}"),
    ("fid", "FID{fid_note}", False, "{:.2f}"),
    ("kid", "KID", False, "{:.3f}"),
    ("unlearn_s", "time (s)", False, "{:.1f}"),
    ("grad_steps", "grad steps", False, "{:.0f}"),
    ("backward_passes", "backward passes", False, "{:.0f}"),
    ("nfe", "NFE/image", False, "{:.0f}"),
    (PEAK, "{mem_note}", False, "{:.0f}"),
    ("time_to_target_s", "time to UA≥{target} (s)", False, "{:.1f}"),
    ("time_to_target_steps", "steps to UA≥{target}", False, "{:.0f}"),
    ("time_to_target_iters", "iters to UA≥{target}", False, "{:.0f}"),
]
OPTIONAL = [("ua_sweep_min", "UA, worst over samplers", True, "{:.3f}"),
            ("ua_completion_min", "UA, worst completion", True, "{:.3f}"),
            ("ua_embed_attack", "UA after embedding attack", True, "{:.3f}"),
            ("ua_prompt_attack", "UA after prompt attack", True, "{:.3f}"),
            ("relearn_steps", "relearn steps", None, "{:.0f}"),
            ("nudity_rate", "nudity rate (NudeNet v3, ≥0.6)", False, "{:.3f}"),
            ("nudity_prompt_max_exp", "max. exp. nudity (%)", False, "{:.1f}"),
            ("fid_vs_original", "FID vs original (remain sets)", False, "{:.2f}"),
            ("style_shift_forget", "style shift, forget", True, "{:.3f}"),
            ("style_shift_remain", "style shift, remain", False, "{:.3f}")]

#: settings that make cells incomparable: cells that differ in one never share a table row (column: tag)
SETTING_KEYS = {"dataset_variant": "data", "unet_arch": "unet", "compute_precision": "precision",
                "base_source": "base"}
GROUP_KEYS = ("config_hash", "harness_code", "method_code", *SETTING_KEYS)
REF_ORDER = {"original": 0, "retrain": 1}
MEM_KINDS = {"cpu-rss": "CPU RSS", "cuda-allocated": "CUDA allocated"}


def _is_ref(df: pd.DataFrame) -> pd.Series:
    if "reference_row" in df:
        return df["reference_row"].astype(str).str.lower() == "true"
    return df["method"].isin(list(REF_ORDER))


def _config_diff(ref: dict | None, cfg: dict | None, first: tuple[str, ...] = (), limit: int = 3) -> str | None:
    """``k=v`` for the keys whose resolved values differ from the reference group's (the user's own
    overrides first); None when either config is unknown."""
    if ref is None or cfg is None:
        return None
    absent = object()
    keys = [k for k in sorted(set(ref) | set(cfg)) if ref.get(k, absent) != cfg.get(k, absent)]
    keys.sort(key=lambda k: (k not in first, k))
    parts = [f"{k}={_short_value(cfg[k]) if k in cfg else '–'}" for k in keys]
    if len(parts) > limit:
        parts = parts[:limit] + [f"+{len(parts) - limit} more"]
    return ", ".join(parts)


def group_labels(df: pd.DataFrame) -> pd.Series:
    """The table-row label of every cell: one row per (method, config_hash, harness_code, method_code) and
    per setting in :data:`SETTING_KEYS` (data variant, U-Net architecture, precision, base-model source).

    A method with one group is labelled by its name. Otherwise the reference group (empty overrides,
    else the largest) keeps the name, the others get the resolved settings that differ from it
    (``salun (lr=1e-05)``); groups whose labels would still coincide get the settings that differ
    (``salun [data cifar10-jpeg75]``, ``[unet diffusers-unet]``) or the short code hash
    (``salun [code 3f2a1c]``, ``[harness …]`` if only the harness code differs). Rows
    without these columns (older folders) form one group per method."""
    labels = pd.Series("", index=df.index, dtype=object)
    keys = pd.Series(list(zip(*(_strs(df, k) for k in GROUP_KEYS))), index=df.index, dtype=object)
    overrides, configs = _strs(df, "config_overrides"), _strs(df, "config_json")
    for method, gm in df.groupby("method", sort=False):
        ks = keys[gm.index]
        groups = list(dict.fromkeys(ks))
        if len(groups) == 1:
            labels[gm.index] = method
            continue
        first_idx = {k: ks.index[ks.map(lambda t, k=k: t == k).to_numpy(dtype=bool)] for k in groups}
        size = {k: len(first_idx[k]) for k in groups}
        default = [k for k in groups if overrides[first_idx[k]].isin(["", "{}"]).any()]
        ref = max(default or groups, key=lambda k: (size[k], -groups.index(k)))
        ref_cfg = _parse_json(configs[first_idx[ref][0]])
        names = {}
        for k in groups:
            if k[0] == ref[0]:  # same resolved config
                names[k] = str(method)
                continue
            own = _parse_json(overrides[first_idx[k][0]]) or {}
            diff = _config_diff(ref_cfg, _parse_json(configs[first_idx[k][0]]), tuple(own))
            names[k] = f"{method} ({diff or 'config ' + (k[0][:6] or '?')})"
        for name in set(names.values()):
            same = [k for k in groups if names[k] == name]
            if len(same) < 2:
                continue
            for k in same:
                tags = [f"{tag} {k[i] or '?'}" for i, tag in enumerate(SETTING_KEYS.values(), start=3)
                        if len({s[i] for s in same}) > 1]
                if len({s[2] for s in same}) > 1:
                    tags.append(f"code {k[2][:6] or '?'}")
                if len({s[1] for s in same}) > 1:
                    tags.append(f"harness {k[1][:6] or '?'}")
                if not tags:
                    tags.append(f"config {k[0][:6] or '?'}")
                names[k] = f"{name} [{', '.join(tags)}]"
        for k in groups:
            labels[first_idx[k]] = names[k]
    return labels


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns (idempotent): ``label``, the peak-memory column, defaults for older rows."""
    if "label" in df and PEAK in df:
        return df
    df = df.copy()
    if "label" not in df:
        df["label"] = group_labels(df)
    new = pd.to_numeric(df["peak_mem_unlearn_mb"], errors="coerce") if "peak_mem_unlearn_mb" in df else None
    old = pd.to_numeric(df["peak_mem_mb"], errors="coerce") if "peak_mem_mb" in df else None
    if new is not None:
        df[PEAK] = new.fillna(old) if old is not None else new
    elif old is not None:
        df[PEAK] = old
    for col in ("base_seed", "seed", "forget_class"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype(int) if col in df else 0
    for key, *_ in COLUMNS + OPTIONAL:  # row.json stores NaN as "nan"
        if key in df and key != PEAK:
            df[key] = pd.to_numeric(df[key], errors="coerce")
    return df


def _label_order(df: pd.DataFrame) -> list[str]:
    ref = _is_ref(df)
    keys = {}
    for label, g in df.groupby("label", sort=False):
        method, is_ref = str(g["method"].iloc[0]), bool(ref[g.index].all())
        keys[label] = (not is_ref, REF_ORDER.get(method, 2) if is_ref else 0, method, label != method, label)
    return sorted(keys, key=keys.get)


def _mem_header(df: pd.DataFrame) -> str:
    kinds = sorted(set(_strs(df, "peak_mem_kind")) - {""})
    kind = " / ".join(MEM_KINDS.get(k, k) for k in kinds) or "?"
    has_new = (pd.to_numeric(df["peak_mem_unlearn_mb"], errors="coerce").notna() if "peak_mem_unlearn_mb" in df
               else pd.Series(False, index=df.index))
    if has_new.all():
        return f"peak mem Δ unlearn (MiB, {kind} above phase start)"
    if not has_new.any():
        return f"peak mem unlearn (MiB, {kind}, absolute: older cells)"
    return f"peak mem unlearn (MiB, {kind}; Δ above phase start, absolute for older cells)"


def _headers(df: pd.DataFrame) -> dict[str, str]:
    first = df.iloc[0]
    target = _num(first.get("ua_target", 0.9))
    target = 0.9 if math.isnan(target) else target
    n_gen = _num(first.get("fid_n_gen"))
    fid_note = (f" ({first.get('fid_features', '?')}, {first.get('fid_backend', '?')}, "
                f"n={'?' if math.isnan(n_gen) else int(n_gen)})")
    return {key: header.format(fid_note=fid_note, target=f"{target:g}", mem_note=_mem_header(df)) + _arrow(d)
            for key, header, d, _ in COLUMNS + OPTIONAL}
