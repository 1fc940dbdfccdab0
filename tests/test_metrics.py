from __future__ import annotations

import torch

from bench.models.diffusion import to_uint8
from metrics._fidelity import clean_fid, torch_fidelity_metrics


def _real(assets, n=300):
    x = assets.splits.train_x[:n]
    return to_uint8(x)


def test_fid_of_a_set_against_itself_is_near_zero_and_grows_with_shift(assets):
    clf = assets.classifier()
    real = _real(assets)
    same = torch_fidelity_metrics(real, real, clf, "test")["fid"]
    assert abs(same) < 1e-3
    shifted = to_uint8((assets.splits.train_x[:300] + 0.3).clamp(-1, 1))
    noisy = to_uint8((assets.splits.train_x[:300] + 0.6 * torch.randn(300, 1, 8, 8)).clamp(-1, 1))
    f_shift = torch_fidelity_metrics(shifted, real, clf, "test")["fid"]
    f_noise = torch_fidelity_metrics(noisy, real, clf, "test")["fid"]
    assert f_shift > 0.1 and f_noise > f_shift


def test_clean_fid_and_torch_fidelity_agree_on_the_same_features(assets):
    clf = assets.classifier()
    a = _real(assets, 200)
    b = to_uint8(assets.splits.test_x[:200])
    tf = torch_fidelity_metrics(a, b, clf, "test", kid=False, prc=False)["fid"]
    cf = clean_fid(a, b, clf)["fid"]
    assert abs(tf - cf) < 1e-3 * max(1.0, tf)


def test_ua_and_retain_accuracy_definitions(assets):
    from bench.metric import EvalContext
    from bench.models.generators import DiffusionSampler
    from metrics.accuracy import RetainAccuracy, UnlearningAccuracy

    real_f = to_uint8(assets.splits.test_x[assets.splits.test_y == 0][:20])
    real_r = to_uint8(assets.splits.test_x[assets.splits.test_y == 5][:20])
    gen = DiffusionSampler(assets.base(), assets.diffusion, 2, 0.0, 0.0, assets.image_shape)
    # "samples" of the forget class that really are 0s: UA must be near 0 (the classifier recognises them)
    ev = EvalContext(assets, gen, 0, 1, 0, real_f, real_r, torch.full((20,), 5))
    ua = UnlearningAccuracy().compute(ev)
    assert ua["ua"] <= 0.1 and abs(ua["ua"] + ua["acc_f"] - 1) < 1e-9
    assert RetainAccuracy().compute(ev)["retain_acc"] >= 0.9
    # the same images presented as if they were forget-class samples of another class: UA near 1
    ev2 = EvalContext(assets, gen, 0, 1, 0, real_r, real_r, torch.full((20,), 3))
    assert UnlearningAccuracy().compute(ev2)["ua"] >= 0.9
    assert RetainAccuracy().compute(ev2)["retain_acc"] <= 0.1
