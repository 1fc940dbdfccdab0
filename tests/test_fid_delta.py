"""``bench pretrain --fid-delta``: the gap between a profile's FID and the paper protocol's, split into the
small-sample bias (same sampler, fewer images) and the sampler's share (same count, other sampler)."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
from test_cli import bench

from bench.engine.calibrate import fid_delta_summary, fid_protocol_delta, write_fid_delta

pytestmark = pytest.mark.usefixtures("one_thread")


def _row(sampler, n, seed, fid, steps=10, eta=0.0):
    return {"sampler": sampler, "steps": steps, "eta": eta, "w": 0.5, "n_per_class": n, "seed": seed, "fid": fid,
            "kid": 0.0, "sample_seconds": 1.0, "fid_features": "task-classifier", "fid_n_ref": 900,
            "weights": "raw"}


def test_summary_splits_the_gap_per_seed_by_its_definitions():
    df = pd.DataFrame([_row("profile", 30, 0, 10.0), _row("profile", 30, 1, 12.0),  # reported: mean 11, range 2
                       _row("profile", 500, 0, 8.0),  # paper's count, profile sampler
                       _row("profile", 50, 0, 15.0), _row("paper", 50, 0, 20.0, steps=1000, eta=1.0)])
    s = fid_delta_summary(df, profile_n=30, count_n=500)
    assert s["reported"] == 11.0 and (s["reported_min"], s["reported_max"], s["seeds"]) == (10.0, 12.0, 2)
    assert s["noise"] == 2.0 and (s["count_n"], s["sampler_n"]) == (500, 50)
    # the bias compares the same seed's two counts (10 - 8), not the seeds' mean with one seed (11 - 8)
    assert s["small_sample_bias_by_seed"] == {0: 2.0} and s["bias_within_noise"]
    assert s["sampler_effect_by_seed"] == {0: 5.0} and not s["sampler_within_noise"]  # 20 - 15 > range 2
    assert s["delta_by_seed"] == {0: 3.0} and not s["delta_within_noise"]  # seed 0: paper 10 - 2 + 5 = 13 vs 10
    assert s["paper_estimate"] == 14.0  # the reported mean plus the gap


def test_no_paper_estimate_from_a_gap_inside_the_seed_range(tmp_path):
    df = pd.DataFrame([_row("profile", 30, 0, 10.0), _row("profile", 30, 1, 14.0),  # range 4
                       _row("profile", 500, 0, 9.0), _row("profile", 50, 0, 15.0),
                       _row("paper", 50, 0, 17.0, steps=1000, eta=1.0)])
    s = fid_delta_summary(df, profile_n=30, count_n=500)
    assert s["delta_by_seed"] == {0: 1.0} and s["delta_within_noise"] and math.isnan(s["paper_estimate"])
    text = write_fid_delta(df, 30, 500, tmp_path, "t")
    assert "within seed noise: the paper protocol's FID is not estimated" in text and "**" not in text


def test_one_seed_has_no_known_noise_and_no_estimate():
    df = pd.DataFrame([_row("profile", 16, 0, 9.0), _row("profile", 64, 0, 6.0),
                       _row("paper", 64, 0, 7.5, steps=1000, eta=1.0)])
    s = fid_delta_summary(df, profile_n=16, count_n=64)
    assert (s["count_n"], s["sampler_n"]) == (64, 64) and math.isnan(s["noise"])
    assert s["small_sample_bias"] == 3.0 and s["sampler_effect"] == 1.5 and s["delta"] == -1.5
    assert math.isnan(s["paper_estimate"])


def test_fid_delta_on_the_digits_model(assets, tmp_path):
    """Real sampling and FID on the smoke base model, with a 20-step 'paper' sampler to stay fast."""
    paper = dataclasses.replace(assets.task.profile("paper"), sampler_steps=20)
    df = fid_protocol_delta(assets, paper, count_n=32, sampler_n=8, forget=0, fast_seeds=2, progress=lambda m: None)
    n0 = assets.profile.n_per_class
    assert list(zip(df.sampler, df.n_per_class, df.seed)) == [("profile", n0, 0), ("profile", n0, 1),
                                                             ("profile", 32, 0), ("profile", 8, 0), ("paper", 8, 0)]
    assert (df.steps.iloc[-1], df.eta.iloc[-1]) == (20, 1.0)
    assert all(math.isfinite(f) and f > 0 for f in df.fid)
    assert df.fid.iloc[0] != df.fid.iloc[1]  # two seeds, two image sets
    assert df.fid.iloc[3] > df.fid.iloc[2]  # 8 per class is biased upward against 32 per class
    text = write_fid_delta(df, n0, 32, tmp_path, "digits smoke")
    s = fid_delta_summary(df, n0, 32)
    assert (f"**{s['delta']:+.3f}**" in text) != ("not estimated" in text)
    assert pd.read_csv(tmp_path / "fid_delta.csv").shape[0] == len(df)


@pytest.mark.parametrize("args,message", [
    (["--fid-delta", "x"], "expects N or N,M"),
    (["--fid-delta", "1"], "expects N or N,M"),
    (["--fid-delta", "5", "--profile", "paper"], "compares a profile with"),
])
def test_bad_fid_delta_is_one_error_before_any_training(tmp_path, args, message):
    r = bench("pretrain", "--task", "digits-class", *args, cache=tmp_path / "empty-cache")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "empty-cache" / "digits-class").exists()  # failed before training anything
