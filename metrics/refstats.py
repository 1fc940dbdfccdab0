"""Reference FID statistics (mu, sigma) computed once and cached like the other assets.

``<cache_dir>/refstats-<content_hash(key)>/stats.npz`` is built with :func:`bench.core.cache.build_asset` (a lock
per folder, built in a temporary sibling, renamed into place, a manifest with the SHA-256 of the file:
a folder whose file no longer matches is rebuilt, never used). The key covers the caller's settings,
the SHA-256 of the image array's bytes (with its shape and dtype), and the extractor's
``cache_key()`` (for :class:`metrics.inception.InceptionFeatures`: the weights' SHA-256, convention,
mode and bf16), so a change to any of them builds new statistics instead of reusing stale ones.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from bench.core.cache import build_asset
from bench.core.errors import BenchError
from bench.core.hashing import content_hash

REFSTATS_VERSION = 1
STATS_FILE = "stats.npz"


def images_sha256(images) -> str:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _extractor_key(extractor) -> dict:
    ck = getattr(extractor, "cache_key", None)
    if ck is None:
        raise TypeError("the extractor needs a cache_key() (or cache_key dict) naming what it computes")
    return ck() if callable(ck) else dict(ck)


def reference_key(images, key: dict, extractor) -> dict:
    """Everything the statistics depend on: settings, images, extractor."""
    shape = tuple(images.shape)
    dtype = str(images.dtype).replace("torch.", "")
    return {"v": REFSTATS_VERSION, "settings": key, "extractor": _extractor_key(extractor),
            "images": {"sha256": images_sha256(images), "shape": list(shape), "dtype": dtype}}


def reference_stats(images_uint8, key: dict, cache_dir: Path, extractor) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(mu, sigma, meta)`` of ``extractor(images_uint8)`` (an (N, D) array), from the cache when the
    same images, settings ``key`` and extractor were seen before; ``meta`` is the folder's manifest
    (``key``, ``n``, ``dim``, ``seconds``, ``files``) plus ``path``."""
    full = reference_key(images_uint8, key, extractor)
    folder = Path(cache_dir) / f"refstats-{content_hash(full)}"

    def build(out: Path) -> dict:
        t = time.perf_counter()
        feats = np.asarray(extractor(images_uint8), dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2 or not np.isfinite(feats).all():
            raise BenchError(f"reference features must be finite (N >= 2, D), got shape {feats.shape}")
        mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
        np.savez(out / STATS_FILE, mu=mu, sigma=sigma)
        return {"kind": "refstats", "key": full, "n": int(feats.shape[0]), "dim": int(feats.shape[1]),
                "seconds": time.perf_counter() - t, "created": time.time()}

    meta = build_asset(folder, build, "reference statistics")
    try:
        with np.load(folder / STATS_FILE, allow_pickle=False) as z:
            mu, sigma = z["mu"], z["sigma"]
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(f"cannot read cached reference statistics {folder}: {exc}; delete it to rebuild") from exc
    return mu, sigma, {**meta, "path": str(folder)}
