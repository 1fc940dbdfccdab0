"""Recovery probes (metrics/probes.py): DDIM from a partially noised image, the sweep's settings, the
``robustness`` group, and what the probes read on real smoke cells."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.engine.driver import CellSpec
from bench.metric import resolve_metrics
from bench.models.diffusion import Diffusion
from metrics.probes import ddim_from


class Oracle(nn.Module):
    """Predicts the exact noise that separates ``x`` from the known clean images ``x0`` at step ``t``."""

    null_class = 10

    def __init__(self, diffusion: Diffusion, x0: torch.Tensor) -> None:
        super().__init__()
        self.ab, self.x0 = diffusion.alphas_cumprod, x0

    def forward(self, x, t, c):
        ab = self.ab[t.long()].view(-1, 1, 1, 1)
        x0 = self.x0.repeat(x.shape[0] // len(self.x0), 1, 1, 1)  # guidance evaluates [cond; null] as one batch
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("t_start,steps", [(300, 10), (500, 25), (700, 3), (999, 1)])
def test_ddim_from_a_noised_image_returns_the_clean_image_under_an_exact_noise_oracle(t_start, steps):
    d = Diffusion()
    g = torch.Generator().manual_seed(t_start)
    x0 = torch.rand((4, 1, 8, 8), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    x_t = d.q_sample(x0, torch.full((4,), t_start), noise)
    c = torch.zeros(4, dtype=torch.long)
    for w in (0.0, 2.0):  # guidance of an oracle that ignores the class changes nothing
        out = ddim_from(Oracle(d, x0), d, x_t, t_start, c, w, steps)
        assert torch.allclose(out, x0, atol=1e-4)


def test_robustness_is_a_group_of_metrics():
    assert resolve_metrics("robustness") == ["sampling_sweep", "completion", "relearn"]
    assert resolve_metrics("relearn, Robustness") == ["relearn", "sampling_sweep", "completion"]
    with pytest.raises(BenchError, match="robustnes"):
        resolve_metrics("robustnes")


@pytest.fixture(scope="module")
def probed(driver):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = driver.run(CellSpec("digits-class", name, forget_class=0, seed=0, profile="smoke",
                                              metrics=("sampling_sweep", "completion")))
        return cache[name]

    return get


def test_sweep_and_completion_columns_on_the_original(probed):
    row = probed("original")
    sweep = {k: row[k] for k in ("ua_w0", "ua_w1", "ua_w2", "ua_w4", "ua_w8", "ua_ddpm", "ua_ddim20")}
    assert all(0 <= v <= 1 for v in sweep.values()) and row["ua_sweep_min"] == min(sweep.values())
    comp = {k: v for k, v in row.items() if k.startswith("ua_complete_")}
    assert len(comp) == 6 and row["ua_completion_min"] == min(comp.values())
    # the base model completes a lightly noised zero conditioned on "zero": the class is all there
    assert row["ua_complete_forget_0.3"] <= 0.1 and row["ua_sweep_min"] <= 0.1
    assert row["sweep_n"] == row["completion_n"] == 16


def test_probes_read_the_unlearned_model_and_leave_the_row_alone(probed, driver):
    ga = probed("ga")
    plain = driver.run(CellSpec("digits-class", "ga", forget_class=0, seed=0, profile="smoke"))
    for key in ("ua", "retain_acc", "fid", "grad_steps", "nfe"):
        assert ga[key] == plain[key], key  # a probe neither depends on nor disturbs the other metrics
    # GA's destroyed model draws no zero at any guidance weight
    assert ga["ua_sweep_min"] >= 0.9


def test_one_step_generators_get_a_reason_not_a_number(probed):
    row = probed("sfd")
    assert math.isnan(float(row["ua_sweep_min"])) and math.isnan(float(row["ua_completion_min"]))
    assert row["sweep_note"].startswith("not applicable: one-step")
    assert row["completion_note"].startswith("not applicable: one-step")
