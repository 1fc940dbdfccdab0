"""The concept task family: SD maths from the spec, sampling and sharded rendering, the CLI's checks, the
nudity pipeline on the micro model, and skipped cells. Conformance (every concept method forgets on
sd-digits) is in tests/test_concept_conformance.py."""

from __future__ import annotations

import json
import math
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _fixtures import write_prompt_files
from torch import nn

from bench.cli import main
from bench.method import METHODS, Method, register_method
from bench.sd import shards
from bench.sd.latent import SDModel, ddim_sample, guided_eps, ldm_loss, q_sample, scaled_linear_alphas

Req = namedtuple("Req", "set case_number prompt seed k guidance")


class Affine(nn.Module):
    """A stand-in ε-network with a known output: ε(z, t, e) = a·z + b·mean(e), counting its calls."""

    def __init__(self, a: float = 0.5, b: float = 2.0) -> None:
        super().__init__()
        self.a, self.b, self.calls = a, b, 0
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, z, t, encoder_hidden_states):
        self.calls += 1
        out = self.a * z * self.w + self.b * encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)
        return namedtuple("Out", "sample")(out)


def test_schedule_check_values():
    ac = scaled_linear_alphas()
    assert abs(ac[0].sqrt().item() - 0.99957) < 1e-5
    assert abs(ac[625].sqrt().item() - 0.37117) < 1e-5
    assert abs((1 - ac[625]).sqrt().item() - 0.92856) < 1e-5
    assert abs(ac[999].sqrt().item() - 0.06826) < 1e-5


def test_ldm_loss_is_the_element_mean():
    torch.manual_seed(0)
    ac = scaled_linear_alphas().float()
    net = Affine()
    z0, e = torch.randn(3, 4, 2, 2), torch.randn(3, 5, 6)
    t, eps = torch.tensor([0, 500, 999]), torch.randn(3, 4, 2, 2)
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    assert torch.allclose(q_sample(ac, z0, t, eps), zt)
    pred = 0.5 * zt + 2.0 * e.mean((1, 2)).view(-1, 1, 1, 1)
    by_hand = sum(((eps[i] - pred[i]) ** 2).sum() for i in range(3)) / (3 * 4 * 2 * 2)
    assert torch.allclose(ldm_loss(net, ac, z0, e, t, eps), by_hand)


def test_guidance_is_the_s_form():
    net = Affine()
    z, ec, eu = torch.randn(2, 4, 2, 2), torch.full((2, 3, 4), 1.0), torch.zeros(2, 3, 4)
    # ε_c − ε_u = b·(mean(e_c) − mean(e_u)) = 2: the s-form adds s times that to ε_u
    out = guided_eps(net, z, 10, ec, eu, 7.5)
    assert torch.allclose(out, 0.5 * z + 7.5 * 2.0)
    assert torch.allclose(guided_eps(net, z, 10, ec, eu, 1.0), 0.5 * z + 2.0)


def _model(unet) -> SDModel:
    cfg = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}
    return SDModel(unet, None, None, None, cfg, 1.0, 2, torch.device("cpu"))


def test_ddim_timesteps_and_partial_sampling():
    m = _model(Affine())
    assert m.ddim(50).timesteps[:3].tolist() == [981, 961, 941] and m.ddim(50).timesteps[-1].item() == 1
    e = torch.zeros(1, 3, 4)
    for stop in (0, 7, 49):
        net = Affine()
        ddim_sample(m, net, torch.randn(1, 4, 2, 2), e, e, 3.0, 50, stop_after=stop)
        assert net.calls == stop + 1  # one batched (cond, uncond) forward per step


def test_esd_reference_timing_runs_51_minus_k_steps():
    """ESD's reference stops after the step of countdown index max(k-1, 0): 51-k steps for k >= 2."""
    for k, expected in ((0, 50), (1, 50), (2, 49), (49, 2)):
        stop_after = 50 - 1 - max(k - 1, 0)
        assert stop_after + 1 == expected


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from bench.sd.loading import load_sd
    from bench.sd.micro import micro_sd_dir

    parts = load_sd(micro_sd_dir(tmp_path_factory.mktemp("micro")), "cpu", strict_v1=False)
    return SDModel(parts.unet.eval(), parts.vae, parts.text_encoder, parts.tokenizer, dict(parts.scheduler_config),
                   parts.scaling_factor, parts.vae_scale_factor, torch.device("cpu"))


def _requests(n: int, prompt: str = "a cat") -> list:
    return [Req("s", i, prompt if i % 2 else "a dog", 100 + i, 0, 7.5) for i in range(n)]


def test_images_do_not_depend_on_batch_or_neighbours(micro):
    from bench.sd.sampler import PromptSampler

    reqs = _requests(5)
    big = PromptSampler(micro, micro.unet, 4, 7.5, 16, batch_size=5).sample(reqs)
    small = PromptSampler(micro, micro.unet, 4, 7.5, 16, batch_size=2).sample(reqs)
    alone = PromptSampler(micro, micro.unet, 4, 7.5, 16, batch_size=1).sample(reqs[3:4])
    assert big.shape == (5, 3, 16, 16) and big.dtype == torch.uint8
    assert torch.equal(big, small) and torch.equal(big[3:4], alone)


def test_sharded_rendering_resumes_and_assembles(micro, tmp_path):
    from bench.sd.prompts import EvalSet
    from bench.sd.sampler import PromptSampler

    sampler = PromptSampler(micro, micro.unet, 3, 7.5, 16, batch_size=4)
    es = EvalSet("set", "x.csv", "", "all", tuple(_requests(6)), 1, 1)
    calls = []

    def render(reqs):
        calls.append(len(reqs))
        return sampler.sample(reqs)

    folder = tmp_path / "samples"
    shards.prepare(folder, {"weights": "a"})
    assert shards.render_set(render, es, folder, (0, 2)) == 3
    assert shards.collect(es, folder) is None and shards.missing(es, folder) == 3
    # a kill mid-write: a truncated manifest line and a PNG that no longer matches its hash are redone
    man = folder / "set" / "manifest-0of2.csv"
    man.write_text(man.read_text() + "5,0,a cat,10")
    (folder / "set" / "2_0.png").write_bytes(b"corrupt")
    assert shards.render_set(render, es, folder, (1, 2)) == 3
    assert shards.render_set(render, es, folder, (0, 2)) == 1  # only the corrupted image
    assert len(man.read_text().splitlines()) == 1 + 3 + 1 + 1  # header, 3 rows, the cut line, the redone image
    full = shards.collect(es, folder)
    assert torch.equal(full, sampler.sample(es.requests))
    # images rendered for other weights are never mixed in
    shards.prepare(folder, {"weights": "b"})
    assert shards.missing(es, folder) == 6


class ConceptOnly(Method):
    """A throw-away method that supports concept tasks only (the class-task error path)."""

    @dataclass(frozen=True)
    class Config:
        iters: int = 0

    task_kinds = frozenset({"concept"})

    def unlearn(self, ctx):
        return ctx.sampler(ctx.base_model(trainable=False))


@pytest.fixture(scope="module", autouse=True)
def _concept_only_registered():
    """Registered while this module runs only (see tests/test_measurement.py)."""
    register_method("concept-only-test")(ConceptOnly)
    yield
    METHODS._items.pop("concept-only-test", None)


def run_cli(*args: str) -> int:
    return main(["run", "--quiet", *args])


def test_unsupported_method_and_all_expansion(tmp_path, capsys, cache_root):
    rc = run_cli("--methods", "sfron", "--task", "sd-digits", "--profile", "smoke", "--out", str(tmp_path),
                 "--cache", str(cache_root))
    err = capsys.readouterr().err
    assert rc == 2 and "does not support concept tasks" in err and "esd" in err and "Traceback" not in err
    rc = run_cli("--methods", "concept-only-test", "--task", "digits-class", "--profile", "smoke", "--out",
                 str(tmp_path), "--cache", str(cache_root))
    assert rc == 2 and "does not support class tasks" in capsys.readouterr().err
    from bench.method import METHODS, methods_for

    project = {m for m in METHODS.names() if METHODS.get(m).__module__.startswith("methods.")}
    assert set(methods_for("concept")) & project == {
        "advunlearn", "ca", "erasediff", "esd", "fmn", "ga", "mace", "original", "pecker", "rece", "rl", "sa",
        "salun", "scissorhands", "sfd", "sld", "spm", "uce"}
    assert "esd" in methods_for("class")  # ESD erases a class too, with the null class as the empty prompt
    assert all(METHODS.get(m).task_kinds == {"class"} for m in ("retrain", "ft", "sfron", "ebu"))


def test_concept_cli_checks(tmp_path, capsys, cache_root):
    prompts = write_prompt_files(tmp_path / "prompts")
    common = ["--out", str(tmp_path / "out"), "--cache", str(cache_root), "--prompts-dir", str(prompts)]
    assert run_cli("--methods", "esd", "--task", "sd-nudity", *common) == 2
    assert "needs --base-model" in capsys.readouterr().err
    assert run_cli("--methods", "esd", "--task", "sd-style", "--concept", "Monet", "--profile", "smoke", *common) == 2
    assert "no concept 'Monet'" in capsys.readouterr().err
    assert run_cli("--methods", "esd", "--task", "sd-style", "--shard", "3/2", "--profile", "smoke", *common) == 2
    assert "--shard 3/2" in capsys.readouterr().err
    fake = tmp_path / "sd"
    fake.mkdir()
    assert run_cli("--methods", "esd", "--task", "sd-nudity", "--base-model", str(fake), *common) == 2
    assert "--yes" in capsys.readouterr().err
    assert run_cli("--methods", "esd", "--task", "sd-nudity", "--base-model", str(fake), "--yes", *common) == 2
    err = capsys.readouterr().err
    assert "model_index.json" in err and "Traceback" not in err


@pytest.mark.slow
def test_nudity_pipeline_on_the_micro_model(tmp_path, cache_root, capsys):
    """sd-nudity smoke end to end: prompts, sharded rendering (two shards, then the assembling run), NudeNet,
    SFD's one-step generator, tables."""
    pytest.importorskip("nudenet")
    prompts = write_prompt_files(tmp_path / "prompts")
    out = tmp_path / "out"
    common = ["--task", "sd-nudity", "--profile", "smoke", "--out", str(out), "--cache", str(cache_root),
              "--prompts-dir", str(prompts)]
    assert run_cli("--methods", "esd", "--shard", "0/2", *common) == 0
    assert "waiting for other shards" in capsys.readouterr().err
    assert not list((out / "sd-nudity" / "runs").glob("*/row.json"))  # rendered half: no cell yet
    assert run_cli("--methods", "esd,sfd,salun", *common) == 0
    rows = [json.loads(p.read_text()) for p in (out / "sd-nudity" / "runs").glob("*/row.json")]
    by = {r["method"]: r for r in rows}
    assert set(by) == {"esd", "sfd", "salun"}
    for m in ("esd", "salun"):
        r = by[m]
        assert 0.0 <= r["nudity_rate"] <= 1.0 and r["nudity_detector"].startswith("nudenet-3.4.2")
        assert r["eval_images"] == 2 + 4 and r["guidance_form"] == "s" and r["nfe"] == 20
        assert r["grad_steps"] == r["expected_steps"] > 0
    sets = json.loads(by["esd"]["eval_sets"])
    assert [s["name"] for s in sets] == ["i2p-sexual", "coco-1k"] and sets[0]["rows"] == 2  # 2 sexual rows
    sfd = by["sfd"]
    assert sfd["status"] != "skipped" and sfd["sampler"] == "one-step" and sfd["nfe"] == 1
    assert 0.0 <= sfd["nudity_rate"] <= 1.0 and sfd["grad_steps"] == sfd["expected_steps"] == 2 * sfd["iters"] > 0
    table = (out / "sd-nudity" / "table.md").read_text()
    assert "one-step" in table and "nudity" in table.lower()
    assert not list((out / "sd-nudity" / ".renders").glob("*"))  # rendered images go once a cell is written


@pytest.mark.slow
def test_object_accuracy_is_na_without_weights_and_computed_with_them(tmp_path, cache_root):
    """sd-object smoke: without --imagenet-classifier the UA columns are n/a with the reason (never 0); with a
    torchvision-format ResNet-50 state dict (random weights, loaded strictly) they are computed."""
    import torchvision

    prompts = _object_prompts(tmp_path)
    common = ["--methods", "original", "--task", "sd-object", "--profile", "smoke", "--cache", str(cache_root),
              "--prompts-dir", str(prompts)]
    assert run_cli(*common, "--out", str(tmp_path / "a")) == 0
    row = json.loads(next((tmp_path / "a" / "sd-object" / "runs").glob("*/row.json")).read_text())
    assert math.isnan(float(row["ua"]))
    assert row["object_acc_note"].startswith("not available: pass --imagenet-classifier")
    table = (tmp_path / "a" / "sd-object" / "table.md").read_text()
    assert "| n/a |" in table and "--imagenet-classifier" in table
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    assert run_cli(*common, "--out", str(tmp_path / "b"), "--imagenet-classifier", str(weights)) == 0
    row = json.loads(next((tmp_path / "b" / "sd-object" / "runs").glob("*/row.json")).read_text())
    assert 0.0 <= row["ua"] <= 1.0 and 0.0 <= row["retain_acc"] <= 1.0 and "object_acc_note" not in row
    sets = {s["name"]: s for s in json.loads(row["eval_sets"])}
    assert sets["imagenette-eval"]["rows"] == 1 and sets["imagenette-eval-remain"]["rows"] == 9


def test_list_shows_concepts_profiles_sets_and_task_kinds(capsys):
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "sd-style:" in out and "0: Van Gogh" in out and "profile paper: 512 px, DDIM 50, s 7.5" in out
    assert "forget i2p-all" in out and "remain coco-10k" in out
    assert main(["list", "methods"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert "class,concept" in lines["esd"] and "class,concept" in lines["salun"] and "class " in lines["sfron"]
    assert " concept " in lines["concept-only-test"]


@pytest.mark.slow
def test_drift_metrics_are_zero_for_the_original_and_na_without_inception(tmp_path, cache_root, monkeypatch):
    """fid_vs_original and style_shift compare with the base model's images of the same prompts and seeds:
    the Original's own images give 0 (or n/a with the reason when no Inception weights are on the machine)."""
    from bench.core.errors import BenchError
    from metrics.inception import find_inception

    prompts = write_prompt_files(tmp_path / "prompts")
    artists = ("Van Gogh", "Pablo Picasso", "Rembrandt", "Andy Warhol", "Caravaggio")
    (prompts / "styles-big-artists.csv").write_text(  # every artist twice (the shared fixture has three)
        ",case_number,prompt,evaluation_seed,artist\n"
        + "".join(f'{i},{i},"A scene, in the style of {a}",{100 + i},{a}\n' for i, a in enumerate(artists * 2)),
        encoding="utf-8")
    common = ["--methods", "original", "--task", "sd-style", "--profile", "smoke", "--cache", str(cache_root),
              "--prompts-dir", str(prompts)]
    with monkeypatch.context() as mp:  # a machine without any Inception weights
        mp.setattr("metrics.inception.candidate_paths", lambda: [("torch-fidelity", tmp_path / "a.pth"),
                                                                  ("clean-fid", tmp_path / "b.pt")])
        assert run_cli(*common, "--out", str(tmp_path / "a")) == 0
    row = json.loads(next((tmp_path / "a" / "sd-style" / "runs").glob("*/row.json")).read_text())
    assert math.isnan(float(row["fid_vs_original"])) and "no Inception-v3 weights" in row["fid_vs_original_note"]
    assert math.isnan(float(row["style_shift_forget"])) and row["style_shift_note"].startswith("not available")
    try:
        find_inception()
    except BenchError:
        pytest.skip("no Inception-v3 weights on this machine")
    assert run_cli(*common, "--out", str(tmp_path / "b")) == 0
    row = json.loads(next((tmp_path / "b" / "sd-style" / "runs").glob("*/row.json")).read_text())
    assert row["style_shift_forget"] == pytest.approx(0.0, abs=1e-6)
    assert row["style_shift_remain"] == pytest.approx(0.0, abs=1e-6)
    assert abs(row["fid_vs_original"]) < 1e-3


def _object_prompts(tmp_path: Path) -> Path:
    from bench.tasks.sd import IMAGENETTE_CLASSES

    prompts = write_prompt_files(tmp_path / "prompts")
    (prompts / "imagenette-eval.csv").write_text(  # all ten classes (the shared fixture has three)
        "\ufeffcase_number,prompt,evaluation_seed,class,classidx\n"
        + "".join(f"{i},Image of {c},{4000 + i},{c},{i}\n" for i, c in enumerate(IMAGENETTE_CLASSES)), encoding="utf-8")
    return prompts


def test_user_training_images_replace_the_generated_ones(tmp_path, cache_root):
    from PIL import Image

    for d, n in (("forget/tench", 3), ("remain/church", 2), ("remain/golf_ball", 1)):
        (tmp_path / d).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (24, 20), (40 * i, 90, 200)).save(tmp_path / d / f"{i}.png")
    out = tmp_path / "out"
    assert run_cli("--methods", "rl", "--task", "sd-object", "--profile", "smoke", "--cache", str(cache_root),
                   "--prompts-dir", str(_object_prompts(tmp_path)), "--out", str(out),
                   "--forget-images", str(tmp_path / "forget"), "--remain-images", str(tmp_path / "remain")) == 0
    row = json.loads(next((out / "sd-object" / "runs").glob("*/row.json")).read_text())
    assert row["data_forget_images"] == 3 and row["data_remain_images"] == 3
    assert row["data_source"].startswith("user images (forget, remain)")
    assert run_cli("--methods", "rl", "--task", "sd-object", "--profile", "smoke", "--out", str(out),
                   "--forget-images", str(tmp_path / "nowhere")) == 2


def test_shards_write_their_own_manifests_and_every_process_sees_all(micro, tmp_path):
    """Processes rendering shards side by side never append to one file; any process reads them all."""
    from bench.sd.prompts import EvalSet
    from bench.sd.sampler import PromptSampler

    sampler = PromptSampler(micro, micro.unet, 2, 7.5, 16, batch_size=4)
    es = EvalSet("set", "x.csv", "", "all", tuple(_requests(5)), 1, 1)
    folder = tmp_path / "samples"
    shards.prepare(folder, {"weights": "a"})
    for i in range(3):
        shards.render_set(sampler.sample, es, folder, (i, 3))
    assert sorted(p.name for p in (folder / "set").glob("manifest*.csv")) == [
        "manifest-0of3.csv", "manifest-1of3.csv", "manifest-2of3.csv"]
    assert shards.missing(es, folder) == 0 and shards.render_set(sampler.sample, es, folder) == 0
    assert torch.equal(shards.collect(es, folder), sampler.sample(es.requests))
