"""The statistics behind the tables: the Student t quantile, a row's mean, sd and 95% interval, and the split of
a row's spread into the part due to base models and the part due to unlearning seeds.

Kept apart from the tables so the numbers can be checked (and tested) without any formatting around them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pandas as pd


@functools.cache
def t_quantile(dof: int, p: float = 0.975) -> float:
    """Student t quantile ``t_{p, dof}`` (``t_quantile(2) = 4.3027``)."""
    from scipy.special import stdtrit

    return float(stdtrit(dof, p))


def interval(values: Any) -> dict[str, float]:
    """``mean``, sample ``sd`` (ddof 1), ``n`` and the 95% Student t interval ``mean ± t_{0.975, n−1}·sd/√n``
    (``ci95_lo``, ``ci95_hi``) of the finite values; the interval is NaN with fewer than 3 values, the sd
    with fewer than 2. The interval is not clipped to a metric's range."""
    s = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    v = v[np.isfinite(v)]
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n >= 2 else math.nan
    lo = hi = math.nan
    if n >= 3:
        h = t_quantile(n - 1) * sd / math.sqrt(n)
        lo, hi = mean - h, mean + h
    return {"mean": mean, "sd": sd, "n": n, "ci95_lo": lo, "ci95_hi": hi}


def _spread_sds(g: pd.DataFrame, key: str) -> tuple[float, float]:
    """(sd over base models, sd over unlearning seeds) of ``key`` within one row label.

    Per forget class: the sample sd (ddof=1) of the per-base-seed means, and the within-base-seed
    sample variances (base seeds with ≥ 2 seeds); pooled over forget classes as the root mean of the
    variances (with one forget class: exactly the sd of the means and sqrt(mean within variance)).
    Cells without the value (never reached the target) are left out. NaN where not computable."""
    v = pd.to_numeric(g[key], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keep = ~np.isnan(v)
    v, b, f = v[keep], g["base_seed"].to_numpy()[keep], g["forget_class"].to_numpy()[keep]
    between, within = [], []
    for fc in np.unique(f):
        vf, bf = v[f == fc], b[f == fc]
        per_base = [vf[bf == bs] for bs in np.unique(bf)]
        means = [float(x.mean()) for x in per_base]
        if len(means) >= 2:
            between.append(float(np.var(means, ddof=1)))
        within += [float(np.var(x, ddof=1)) for x in per_base if len(x) >= 2]
    sd = [math.sqrt(float(np.mean(x))) if x else math.nan for x in (between, within)]
    return sd[0], sd[1]
