"""The relearn-time metric on a tiny setting: a finite count or a censoring flag, never touching
the evaluated network."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bench.metric import METRICS, EvalContext
from bench.models.diffusion import Diffusion
from bench.models.generators import DiffusionSampler, OneStepGenerator
from bench.models.nets import CondUNet, SmallClassifier
from bench.tasks.digits import DIGITS
from metrics.relearn import RelearnTime

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    splits = DIGITS.load_splits()
    clf = SmallClassifier(1, 10).eval()
    profile = SimpleNamespace(name="smoke", sampler_steps=4, guidance=0.5, eta=0.0)
    assets = SimpleNamespace(profile=profile, splits=splits, classifier=lambda: clf,
                             device=torch.device("cpu"))
    net = CondUNet(DIGITS.unet_config, 10).eval()
    gen = DiffusionSampler(net, Diffusion(), 4, 0.5, 0.0, (1, 8, 8), "raw")
    empty = torch.empty(0, 1, 8, 8, dtype=torch.uint8)
    ev = EvalContext(assets, gen, 0, 1, 0, empty, empty, torch.empty(0, dtype=torch.long))
    return ev, net


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_registered_optional_without_direction():
    cls = METRICS.get("relearn")
    assert cls is RelearnTime and cls.default is False
    assert cls.directions["relearn_steps"] is None


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.01])
def test_finite_count_or_censored_and_network_untouched(setting, threshold):
    ev, net = setting
    before = _state(net)
    was_training = net.training
    metric = RelearnTime(every=2, cap=4, n_samples=6)
    metric.threshold = threshold
    out = metric.compute(ev)
    after = _state(net)
    assert all(torch.equal(before[k], after[k]) for k in before), "the evaluated network was modified"
    assert net.training == was_training and all(p.grad is None for p in net.parameters())
    steps, censored = out["relearn_steps"], out["relearn_censored"]
    assert censored in (0.0, 1.0)
    if censored:
        assert math.isnan(steps) and "4" in out["relearn_note"]
    else:
        assert math.isfinite(steps) and 0 <= steps <= 4 and (steps == 4 or steps % 2 == 0)
    if threshold == 0.0:
        assert steps == 0.0 and not censored  # already "relearned" before any step
    if threshold > 1.0:
        assert censored == 1.0 and out["relearn_acc_f_last"] <= 1.0  # accuracy can never reach it


def test_relearn_is_deterministic_and_leaves_global_rng_alone(setting):
    ev, _ = setting
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    m = RelearnTime(every=2, cap=2, n_samples=4)
    a = m.compute(ev)
    assert torch.equal(torch.rand(3), expected_next)
    b = m.compute(ev)
    assert a["relearn_acc_f0"] == b["relearn_acc_f0"]
    assert a["relearn_acc_f_last"] == b["relearn_acc_f_last"]


def test_one_step_generator_is_not_applicable(setting):
    ev, net = setting
    one = OneStepGenerator(net, lambda n, z, c: z, (1, 8, 8))
    ev1 = EvalContext(ev.assets, one, 0, 1, 0, ev.forget_images, ev.remain_images, ev.remain_labels)
    out = RelearnTime().compute(ev1)
    assert math.isnan(out["relearn_steps"]) and out["relearn_note"].startswith("not applicable")


def test_profile_schedule():
    m = RelearnTime()
    assert m.settings("smoke") == (10, 40, 16)
    assert m.settings("paper") == m.default_schedule
    assert RelearnTime(every=5, cap=7, n_samples=3).settings("fast") == (5, 7, 3)
