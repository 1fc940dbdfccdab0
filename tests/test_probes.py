"""Recovery probes (metrics/probes.py): DDIM from a partially noised image, the sweep's settings, the
``robustness`` group, and what the probes read on real smoke cells."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from PIL import Image
from torch import nn

from bench.core.errors import BenchError
from bench.engine.driver import CellSpec
from bench.metric import resolve_metrics
from bench.models.diffusion import Diffusion
from bench.reports.reporter import Reporter
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
    assert resolve_metrics("robustness")[:4] == ["sampling_sweep", "completion", "embedding_attack", "relearn"]
    assert resolve_metrics("relearn, Robustness")[:4] == ["relearn", "sampling_sweep", "completion", "embedding_attack"]
    with pytest.raises(BenchError, match="robustnes"):
        resolve_metrics("robustnes")


@pytest.fixture(scope="module")
def probed(driver):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = driver.run(CellSpec("digits-class", name, forget_class=0, seed=0, profile="smoke",
                                              metrics=("sampling_sweep", "completion", "embedding_attack")))
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


def test_embedding_attack_on_real_cells(probed):
    orig, ga = probed("original"), probed("ga")
    for row in (orig, ga):
        assert row["asr_embed_attack"] == pytest.approx(1 - row["ua_embed_attack"])
        assert row["embed_attack_steps"] == 10 and row["embed_attack_images"] == 8 and row["embed_attack_n"] == 16
        assert row["embed_attack_s"] > 0 and row["embed_attack_note"] == ""
    assert orig["ua_embed_before"] <= 0.1  # the base model draws zeros for "0" before any attack
    # GA pushed the denoising loss of zeros up; the attacked row brings it down again
    assert ga["embed_attack_loss"] < ga["embed_attack_loss0"]
    sfd = probed("sfd")
    assert math.isnan(float(sfd["ua_embed_attack"])) and sfd["embed_attack_note"].startswith("not applicable")


def test_the_probe_grid_shows_every_setting_and_reaches_the_report(probed, driver, tmp_path):
    rows = [probed(m) for m in ("original", "sfd")]
    src = driver.options.out / "digits-class" / "runs"
    out = tmp_path / "digits-class"
    for row in rows:
        shutil.copytree(src / row["cell"], out / "runs" / row["cell"])
    grid = out / "runs" / rows[0]["cell"] / "probes.png"
    settings = 7 + 6 + 2  # sweep, completion, the attack's before/after
    assert Image.open(grid).height >= settings * 0.62 * 100 * 0.9  # one row of images per setting
    assert not (out / "runs" / rows[1]["cell"] / "probes.png").exists()  # a one-step generator draws none
    Reporter(out).finish(quiet=True)
    assert (out / "samples" / "original_probes_smoke.png").is_file()  # profiles other than fast carry a suffix
    assert "What the recovery probes drew" in (out / "report.html").read_text()
