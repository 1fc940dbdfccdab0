"""Recovery probes on concept tasks (metrics/concept_probes.py, concept_attack.py, concept_relearn.py): DDIM from
a noised latent with the method's sampler, the token attack's optimisation, what the probes read on real
sd-digits smoke cells, the robustness group on both task kinds, and the reasons where a probe cannot run."""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from _fixtures import write_prompt_files
from PIL import Image
from torch import nn

from bench.assets.concepts import ConceptAssets
from bench.engine.driver import CellSpec
from bench.engine.plugins import load_all
from bench.metric import METRICS, ConceptEvalContext, resolve_metrics
from bench.reports import aggregate
from bench.sd.latent import SDModel, q_sample
from bench.sd.safe import SafeSampler, SafetyGuidance
from bench.sd.sampler import OneStepPromptSampler, PromptSampler
from bench.tasks import get_task
from metrics._concept_probe import DIGITS_BUDGETS, denoise_from, start_step
from metrics.concept_attack import concept_span, encode_with, invert_tokens
from metrics.concepts import ObjectAccuracy

load_all()
CONCEPT_PROBES = ("concept_sweep", "concept_completion", "concept_token_attack", "concept_prompt_attack",
                  "concept_relearn")
CLASS_PROBES = ("sampling_sweep", "completion", "embedding_attack", "relearn")
MAIN = {"concept_sweep": "ua_sweep_min", "concept_completion": "ua_completion_min",
        "concept_token_attack": "ua_embed_attack", "concept_prompt_attack": "ua_prompt_attack",
        "concept_relearn": "relearn_steps"}
PREFIX = {"concept_sweep": "sweep", "concept_completion": "completion", "concept_token_attack": "embed_attack",
          "concept_prompt_attack": "prompt_attack", "concept_relearn": "relearn"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# --- DDIM from a noised latent --------------------------------------------------------------------------------
class NoiseOracle(nn.Module):
    """A UNet that predicts the exact noise separating ``z`` from the known clean latents ``z0`` at step ``t``,
    whatever the text; it counts its calls."""

    def __init__(self, ac: torch.Tensor, z0: torch.Tensor) -> None:
        super().__init__()
        self.ac, self.z0, self.calls = ac, z0, 0

    def forward(self, z, t, encoder_hidden_states):
        self.calls += 1
        a = self.ac[t.long()].view(-1, 1, 1, 1)
        z0 = self.z0.repeat(z.shape[0] // len(self.z0), 1, 1, 1)  # guidance runs [uncond; cond] as one batch
        return SimpleNamespace(sample=(z - a.sqrt() * z0) / (1 - a).sqrt())


class IdentityVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # SDModel reads the VAE's dtype from its parameters

    def decode(self, z):
        return SimpleNamespace(sample=z)


def _oracle_sampler(z0: torch.Tensor, rule: str, steps: int) -> PromptSampler:
    model = SDModel(nn.Identity(), IdentityVAE(), nn.Identity(), None, {}, 1.0, 1, torch.device("cpu"))
    model.unet = NoiseOracle(model.alphas_cumprod, z0)
    sampler = PromptSampler(model, model.unet, steps, 7.5, 4, batch_size=8)
    if rule == "sld":
        sampler = SafeSampler(sampler, SafetyGuidance("a safety concept", warmup=0))
    sampler.text = lambda prompts: torch.zeros(len(prompts), 77, 8)
    return sampler


@pytest.mark.parametrize("rule", ["plain", "sld"])
@pytest.mark.parametrize("level,steps", [(0.3, 10), (0.5, 50), (0.7, 10), (0.99, 4)])
def test_ddim_from_a_noised_latent_returns_the_clean_latent_under_an_exact_noise_oracle(rule, level, steps):
    g = torch.Generator().manual_seed(steps)
    z0 = torch.randn((5, 4, 2, 2), generator=g)
    eps = torch.randn(z0.shape, generator=g)
    sampler = _oracle_sampler(z0, rule, steps)
    m = sampler.model
    t = start_step(m, steps, level)
    grid = m.ddim(steps).timesteps
    assert t in grid.tolist() and abs(t - level * 1000) == min(abs(g - level * 1000) for g in grid.tolist())
    z_t = q_sample(m.alphas_cumprod, z0, torch.full((5,), t), eps)
    for guidance in (1.0, 7.5):  # an oracle that ignores the text is unmoved by guidance and by SLD's rule
        m.unet.calls = 0
        out = denoise_from(sampler, z_t, t, ["a prompt"] * 5, guidance)
        # SD's DDIM ends at ᾱ_0 (set_alpha_to_one=False), not at 1: the clean latent at that last noise level
        a0 = m.alphas_cumprod[0]
        assert torch.allclose(out, a0.sqrt() * z0 + (1 - a0).sqrt() * eps, atol=1e-4)
        assert torch.allclose(out, z0, atol=0.2)
        # only the timesteps from t down are run (one batched call per step)
        assert m.unet.calls == int((grid <= t).sum())


# --- the token attack ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(driver):
    """The sd-digits smoke assets, its model and a context over the base model's sampler (no cell run)."""
    a = driver.assets(get_task("sd-digits"), "smoke")
    m = a.model()
    p = a.profile
    sets = {es.name: (use, es, torch.zeros(0, 3, 16, 16, dtype=torch.uint8)) for use, es in a.eval_sets(0)}

    def ctx(sampler=None, task=a.task, seed=0) -> ConceptEvalContext:
        sampler = sampler or PromptSampler(m, m.unet, p.sampler_steps, p.guidance, p.px, batch_size=p.eval_batch)
        return ConceptEvalContext(a, task, p, 0, sets, driver.options, sampler, seed)

    return SimpleNamespace(assets=a, model=m, ctx=ctx)


def test_the_token_attack_lowers_the_loss_through_the_concept_tokens_and_leaves_every_weight(digits):
    m, prompt = digits.model, "a handwritten digit zero"
    start, k = concept_span(m, prompt, "zero")
    ids = m.token_ids([prompt])
    assert k == len(m.word_ids("zero")) and ids[0, start:start + k].tolist() == m.word_ids("zero")
    table = m.text_encoder.get_input_embeddings().weight
    # starting from the embedding of the word itself, the encoder gives the plain prompt's embedding
    with torch.no_grad():
        assert torch.allclose(encode_with(m.text_encoder, ids, start, table[ids[0, start:start + k]]),
                              m.text([prompt]), atol=1e-5)
    x = digits.assets.data(0).forget_images[:16]
    z0 = m.encode(x.float() / 127.5 - 1.0, sample=False)
    wrong = table[m.token_ids(["a handwritten digit seve"])[0, start:start + k]]  # "seve" in place of "zero"
    nets = (m.unet, m.text_encoder)
    before = [{n: v.clone() for n, v in net.state_dict().items()} for net in nets]
    values, loss0, loss1 = invert_tokens(m.text_encoder, m.unet, m.alphas_cumprod, z0, ids, start, wrong, 20,
                                         5e-3, seed=3)
    assert loss1 < 0.95 * loss0  # the attacked word explains the zeros better than "seve" did
    assert values.shape == wrong.shape and not torch.equal(values, wrong)
    for net, state in zip(nets, before):
        assert all(torch.equal(v, state[n]) for n, v in net.state_dict().items())
        assert all(p.grad is None for p in net.parameters())
    assert not any(mod._forward_hooks for mod in m.text_encoder.modules())  # the embedding hook is gone


def test_a_method_text_encoder_is_attacked_and_relearned_through_never_the_base_one(digits, monkeypatch):
    """AdvUnlearn ships its own text encoder: here one that reads "zero" as "seve" (the base UNet then draws
    sevens for the forget caption). The attack starts from that encoder's embeddings of the word and goes
    through it, relearning conditions on it, and neither touches it nor calls the task's encoder."""
    m, p = digits.model, digits.assets.profile
    own = copy.deepcopy(m.text_encoder)
    with torch.no_grad():
        table = own.get_input_embeddings().weight
        for i, j in zip(m.word_ids("zero"), m.word_ids("seve")):
            table[i] = table[j].clone()
    state = {k: v.clone() for k, v in own.state_dict().items()}
    calls = {"base": 0, "own": 0}
    hooks = [net.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
             for key, net in (("base", m.text_encoder), ("own", own))]
    sampler = PromptSampler(m, m.unet, p.sampler_steps, p.guidance, p.px, batch_size=p.eval_batch, text_encoder=own)
    short = dataclasses.replace(DIGITS_BUDGETS["smoke"], relearn_every=2, relearn_cap=2)  # one check is enough here
    monkeypatch.setitem(DIGITS_BUDGETS, "smoke", short)
    try:
        attack = METRICS.get("concept_token_attack")().compute(digits.ctx(sampler))
        relearn = METRICS.get("concept_relearn")().compute(digits.ctx(sampler))
    finally:
        for h in hooks:
            h.remove()
    assert calls["base"] == 0 and calls["own"] > attack["embed_attack_steps"]
    assert all(torch.equal(v, state[k]) for k, v in own.state_dict().items())
    assert attack["ua_embed_before"] >= 0.9 and attack["embed_attack_loss"] < attack["embed_attack_loss0"]
    assert relearn["relearn_acc_f0"] < 0.5 and relearn["relearn_cap"] == 2 and relearn["relearn_note"] in (
        "", "not relearned within 2 steps")


# --- probes on real cells --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cells(driver):
    cache: dict[tuple[str, bool], dict] = {}

    def get(method: str, probes: bool = True) -> dict:
        if (method, probes) not in cache:
            cache[(method, probes)] = driver.run(CellSpec("sd-digits", method, forget_class=0, seed=0,
                                                          profile="smoke", metrics=CONCEPT_PROBES if probes else ()))
        return cache[(method, probes)]

    return get


def test_probes_on_an_erased_concept(cells):
    row = cells("uce")
    sweep = {k: row[k] for k in ("ua_s1", "ua_s3", "ua_s5", "ua_s7.5", "ua_s12", "ua_ddim20")}
    assert all(0 <= v <= 1 for v in sweep.values()) and row["ua_sweep_min"] == min(sweep.values())
    comp = {k: v for k, v in row.items() if k.startswith("ua_complete_")}
    assert sorted(comp) == sorted(f"ua_complete_{c}_{lv}" for c in ("forget", "null") for lv in ("0.3", "0.5", "0.7"))
    assert row["ua_completion_min"] == min(comp.values()) and row["completion_t"] == "301,501,701"
    assert row["sweep_n"] == row["completion_n"] == row["embed_attack_n"] == row["relearn_n"] == 16
    for prefix in PREFIX.values():
        assert row[f"{prefix}_note"] == "" and row[f"{prefix}_s"] > 0
    # UCE's edit hides "zero" from the plain caption; its own concept word, re-optimised, brings it back
    assert row["ua"] >= 0.9 and row["ua_embed_before"] >= 0.9
    assert row["embed_attack_loss"] < row["embed_attack_loss0"]
    assert row["asr_embed_attack"] == pytest.approx(1 - row["ua_embed_attack"]) and row["ua_embed_attack"] <= 0.5
    assert (row["embed_attack_word"], row["embed_attack_tokens"], row["embed_attack_steps"]) == ("zero", 4, 20)
    # relearning: the rule of the class tasks (first check with half of the images read as the concept)
    assert row["relearn_acc_f0"] < 0.5 and row["relearn_censored"] == 0.0
    assert row["relearn_steps"] % row["relearn_every"] == 0 and row["relearn_acc_f_last"] >= 0.5


def test_probes_leave_the_row_alone(cells):
    probed, plain = cells("uce"), cells("uce", probes=False)
    for key in ("ua", "retain_acc", "fid", "grad_steps", "nfe", "forward_images"):
        assert probed[key] == plain[key], key
    assert not any(k.startswith(("ua_s", "ua_complete", "relearn")) for k in plain)


def test_the_probe_grid_of_a_concept_cell_has_a_row_per_setting(cells, driver):
    runs = driver.options.out / "sd-digits" / "runs"
    probed, plain = cells("uce"), cells("uce", probes=False)
    assert not (runs / plain["cell"] / "probes.png").exists()
    grid = Image.open(runs / probed["cell"] / "probes.png")
    # sweep, completion, the token attack's before/after, the prompt attack, relearn
    settings = 6 + 6 + 2 + 1 + (probed["relearn_steps"] > 0)
    samples = Image.open(runs / probed["cell"] / "samples.png")
    assert grid.height > samples.height and grid.height >= settings * 0.62 * 100 * 0.9


def test_a_model_that_still_draws_the_concept_is_relearned_at_step_0_and_the_rng_is_untouched(digits):
    state = torch.get_rng_state()
    out = METRICS.get("concept_relearn")().compute(digits.ctx())
    assert out["relearn_steps"] == 0.0 and out["relearn_acc_f0"] >= 0.5 and out["relearn_note"] == ""
    assert torch.equal(torch.get_rng_state(), state)


def test_the_robustness_table_has_the_concept_columns_and_says_why_one_step_rows_have_none(cells, digits):
    uce = cells("uce")
    sampler = digits.ctx().sampler
    one_step = digits.ctx(OneStepPromptSampler.like(sampler, 625))
    nan_row = dict(uce, method="sfd", cell_id="x", cell="sfd-x", config_hash="other")
    for name in CONCEPT_PROBES:
        out = METRICS.get(name)().compute(one_step)
        assert math.isnan(out[MAIN[name]]), name
        assert out[f"{PREFIX[name]}_note"].startswith("not applicable: one-step generator"), name
        nan_row.update(out)
    table = aggregate(pd.DataFrame([uce, nan_row]))
    heads = {h: next(c for c in table.columns if c.startswith(h)) for h in
             ("UA, worst over samplers", "UA, worst completion", "UA after embedding attack", "UA after prompt attack",
              "relearn steps")}
    rows = table.set_index("method")
    assert all(rows.loc["sfd", c] == "n/a" for c in heads.values())
    assert rows.loc["uce", heads["UA, worst over samplers"]] == f"{uce['ua_sweep_min']:.3f}"


def test_a_task_without_a_classifier_ua_gets_a_note(digits):
    ctx = digits.ctx(task=get_task("sd-nudity"))
    for name in CONCEPT_PROBES:
        out = METRICS.get(name)().compute(ctx)
        assert math.isnan(out[MAIN[name]]) and "no classifier-based UA" in out[f"{PREFIX[name]}_note"]


def test_robustness_names_both_kinds_and_each_cell_keeps_its_own(driver):
    assert set(resolve_metrics("robustness")) == {*CLASS_PROBES, *CONCEPT_PROBES}
    every = tuple(resolve_metrics("robustness"))
    concept = driver.plan(CellSpec("sd-digits", "original", 0, 0, "smoke", metrics=every))
    klass = driver.plan(CellSpec("digits-class", "original", 0, 0, "smoke", metrics=every))
    assert set(CONCEPT_PROBES) <= set(concept.identity["metrics"])
    assert not set(CLASS_PROBES) & set(concept.identity["metrics"])
    assert set(CLASS_PROBES) <= set(klass.identity["metrics"])
    assert not set(CONCEPT_PROBES) & set(klass.identity["metrics"])
    # a cell without optional metrics keeps its identity
    plain = driver.plan(CellSpec("sd-digits", "original", 0, 0, "smoke"))
    assert driver.plan(CellSpec("sd-digits", "original", 0, 0, "smoke", metrics=CLASS_PROBES)).id == plain.id


class SeesOnly(nn.Module):
    """A stand-in ImageNet classifier whose top-1 is always ImageNet class ``target``."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target

    def forward(self, x):
        logits = torch.zeros(len(x), 1000)
        logits[:, self.target] = 1.0
        return logits


def test_sd_object_probes_read_with_the_imagenet_classifier_and_need_it(tmp_path, cache_root, monkeypatch):
    """sd-object (the micro model of its smoke profile): the probes read images with --imagenet-classifier's
    top-1 at the concept's ImageNet class, as object_acc does, at the SD smoke budget; without it, a note."""
    task = get_task("sd-object")
    prompts = write_prompt_files(tmp_path / "prompts")
    (prompts / "imagenette-eval.csv").write_text(  # all ten classes (the shared fixture has three)
        "case_number,prompt,evaluation_seed,class,classidx\n"
        + "".join(f"{i},Image of {c},{4000 + i},{c},{i}\n" for i, c in enumerate(task.concepts)), encoding="utf-8")
    a = ConceptAssets(task, task.profile("smoke"), torch.device("cpu"), cache_root, prompts_dir=prompts,
                      log=lambda m: None)
    m, p = a.model(), a.profile
    sets = {es.name: (use, es, torch.zeros(0, 3, 16, 16, dtype=torch.uint8)) for use, es in a.eval_sets(0)}
    sampler = PromptSampler(m, m.unet, p.sampler_steps, p.guidance, p.px, batch_size=p.eval_batch)
    ctx = ConceptEvalContext(a, task, p, 0, sets, SimpleNamespace(imagenet_classifier=None), sampler, 0)
    for name in CONCEPT_PROBES:
        assert "--imagenet-classifier" in METRICS.get(name)().compute(ctx)[f"{PREFIX[name]}_note"]
    seen = []
    monkeypatch.setattr("metrics._concept_probe.load_resnet50", lambda path, dev: seen.append(path) or SeesOnly(
        ObjectAccuracy.IMAGENET_IDS[0]))
    ctx.options = SimpleNamespace(imagenet_classifier=tmp_path / "resnet50.pth")
    out = {k: v for name in CONCEPT_PROBES for k, v in METRICS.get(name)().compute(ctx).items()}
    assert seen and all(path == tmp_path / "resnet50.pth" for path in seen)
    assert out["ua_sweep_min"] == out["ua_completion_min"] == out["ua_embed_attack"] == 0.0  # all read as tench
    assert out["relearn_steps"] == 0.0 and out["embed_attack_word"] == "tench"
    assert out["sweep_n"] == out["embed_attack_n"] == 4 and out["embed_attack_steps"] == 4
