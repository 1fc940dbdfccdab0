"""Cached assets of a concept task: the base text-to-image model, training data, evaluation sets and, for
``sd-digits``, the digits classifier that scores the generated images.

The base model is the user's Stable Diffusion v1.x folder (``--base-model``, validated before any work),
the micro model of the ``smoke`` profiles (built from configs), or the ``sd-digits`` model the harness
trains and caches under ``<cache>/sd-digits/base-<hash>/`` like the class tasks' base models.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from bench.assets.classes import Assets
from bench.core.cache import build_asset
from bench.core.errors import BenchError
from bench.core.hashing import content_hash
from bench.core.measure import Counts
from bench.sd import shards
from bench.sd.data import ConceptData, generated_data, user_images
from bench.sd.digits import digit_images, train_digits_sd
from bench.sd.family import TextFamily
from bench.sd.latent import SDModel
from bench.sd.loading import load_sd
from bench.sd.micro import micro_sd_dir
from bench.sd.prompts import EvalSet, Request, eval_set, find_prompts_dir
from bench.sd.sampler import PromptSampler
from bench.tasks import get_task
from bench.tasks.concepts import ConceptProfile, ConceptTask
from bench.tasks.sd import caption

DIGITS_SEED_BASE = 5_000_000  # evaluation seeds of sd-digits: base + 10_000 * digit + row


class ConceptAssets:
    def __init__(self, task: ConceptTask, profile: ConceptProfile, device: torch.device, cache_root: Path,
                 base_model: Path | None = None, allow_pickle: bool = False, prompts_dir: Path | None = None,
                 log=None, forget_images: Path | None = None, remain_images: Path | None = None) -> None:
        self.task, self.profile, self.device = task, profile, device
        self.cache_root = Path(cache_root)
        self.root = self.cache_root / task.name
        self.base_model_path = Path(base_model) if base_model else None
        self.allow_pickle = allow_pickle
        self.prompts_dir = prompts_dir
        self.forget_images, self.remain_images = forget_images, remain_images
        self._model: SDModel | None = None
        self._data: dict[tuple[int, int], ConceptData] = {}
        self._classifier = None
        self.base_meta: dict = {}
        self.classifier_meta: dict = {}
        self._log = log or (lambda m: print(m, file=sys.stderr))

    @property
    def sample_dtype(self) -> torch.dtype:
        """fp16 sampling on CUDA when the profile says so (SD v1's VAE is fp16-safe); fp32 on a CPU."""
        return torch.float16 if (self.device.type == "cuda" and self.profile.dtype_sample == "fp16") else torch.float32

    # --- the base model ----------------------------------------------------------------------
    def model_folder(self) -> tuple[Path, bool]:
        """(diffusers folder, strict SD v1.x validation)."""
        if self.task.family == "digits":
            return self._digits_base(), False
        if self.base_model_path is not None:
            return self.base_model_path, True
        if self.profile.needs_base_model:
            raise BenchError(f"task {self.task.name!r}, profile {self.profile.name!r} needs --base-model PATH: a "
                             f"Stable Diffusion v1.x diffusers folder (v1.4 or v1.5); the smoke profile runs on a "
                             f"built-in micro model")
        return micro_sd_dir(self.cache_root), False

    def model(self) -> SDModel:
        if self._model is None:
            folder, strict = self.model_folder()
            dtype = torch.float16 if (self.device.type == "cuda" and self.profile.dtype_sample == "fp16") else None
            parts = load_sd(folder, self.device, strict_v1=strict, allow_pickle=self.allow_pickle)
            if dtype is not None:  # frozen parts in fp16 on CUDA; the UNet's master weights stay fp32
                parts.vae.to(dtype)
                parts.text_encoder.to(dtype)
            self._model = SDModel(parts.unet.eval(), parts.vae.eval(), parts.text_encoder.eval(), parts.tokenizer,
                                  dict(parts.scheduler_config), float(parts.scaling_factor),
                                  int(parts.vae_scale_factor), self.device, dict(parts.info))
            self.base_meta = {**self.base_meta, "path": str(folder), "base_hash": parts.info.get("base_hash", ""),
                              "kind": "user" if strict else "harness"}
        return self._model

    def _digits_base(self) -> Path:
        recipe = self.task.recipe
        folder = self.root / f"base-{content_hash({'v': 1, 'recipe': asdict(recipe)}, 12)}"

        def build(tmp: Path) -> dict:
            self._log(f"bench: training the sd-digits text-to-image model ({recipe.vae_steps} VAE + "
                      f"{recipe.unet_steps} UNet steps; cached for later runs)")
            return train_digits_sd(tmp, recipe, log=lambda m: None)

        self.base_meta = build_asset(folder, build, "sd-digits base model")
        return folder

    def prepare(self) -> None:
        """Build (or verify) what every cell of this task loads: the model and, for sd-digits, its classifier."""
        self.model()
        self.classifier()

    # --- what a method sees --------------------------------------------------------------------
    def family(self, concept: int, seed: int, counts: Counts) -> TextFamily:
        """The model family a method unlearns through (:mod:`bench.sd.family`), with this concept's data."""
        return TextFamily(self.model(), self.task, self.profile, concept, seed, lambda: self.data(concept), counts)

    # --- training data -----------------------------------------------------------------------
    def data(self, k: int, data_seed: int = 0) -> ConceptData:
        """D_f, D_r and SA's surrogate images of concept ``k``: the real digits (sd-digits), the user's folders,
        or images the base model generates once and caches on disk; loaded once per process."""
        key = (k, data_seed)
        if key not in self._data:
            self._data[key] = self._load_data(k, data_seed)
        return self._data[key]

    def _load_data(self, k: int, data_seed: int) -> ConceptData:
        prompts = self.task.prompts(k)
        if self.task.family == "digits":
            x, y = digit_images(self.profile.px)
            u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            f, r = y == k, y != k
            cover = (k + 1) % 10
            return ConceptData(u8[f], [caption(k)] * int(f.sum()), u8[r], [caption(int(c)) for c in y[r]],
                               u8[y == cover], {"data_source": "real digits (sklearn, upsampled)",
                                                "forget_images": int(f.sum()), "remain_images": int(r.sum())})
        m = self.model()
        given = user_images(self.task, k, self.profile.px, self.forget_images, self.remain_images)
        sampler = PromptSampler(m, m.unet, self.profile.sampler_steps, self.profile.guidance, self.profile.px,
                                "base", self.profile.eval_batch, dtype=self.sample_dtype)
        return generated_data(sampler, prompts, self.profile.n_forget_images, self.profile.n_remain_images,
                              data_seed, self.root, self.base_meta.get("base_hash", ""), self._log, given)

    # --- evaluation sets ---------------------------------------------------------------------
    def eval_sets(self, k: int) -> list[tuple[str, object]]:
        """[(use, EvalSet)] of the profile for concept ``k``; names are unique within a cell."""
        out = []
        for plan in self.task.eval_plan(self.profile, k):
            if plan.set.startswith("digits:"):
                es = _digit_set(plan, self.profile.guidance)
            else:
                opts = dict(plan.options)
                es = eval_set(plan.set, find_prompts_dir(self.prompts_dir), limit=plan.limit,
                              images_per_row=plan.images_per_row, guidance=self.profile.guidance,
                              i2p_guidance=self.profile.i2p_guidance, **opts)
            name = es.name if plan.use == "forget" or not plan.options else f"{es.name}-remain"
            if name != es.name:
                es = dataclasses.replace(es, name=name,
                                         requests=tuple(dataclasses.replace(r, set=name) for r in es.requests))
            out.append((plan.use, es))
        return out

    def base_renders(self, es) -> torch.Tensor:
        """The base model's images of an evaluation set (same requests, same sampler), rendered once and cached
        under ``<cache>/<task>/base-renders/``: the reference of ``fid_vs_original`` and ``style_shift``."""
        m = self.model()
        sampler = PromptSampler(m, m.unet, self.profile.sampler_steps, self.profile.guidance, self.profile.px, "base",
                                self.profile.eval_batch, dtype=self.sample_dtype)
        key = {"base": self.base_meta.get("base_hash", ""), "sampler": sampler.describe()}
        folder = self.root / "base-renders" / content_hash(key, 12)
        shards.prepare(folder, key)
        shards.render_set(lambda reqs: sampler.sample(reqs, es.images_per_row), es, folder, (0, 1),
                          self.profile.eval_batch)
        return shards.collect(es, folder)

    # --- the digits classifier (sd-digits) ---------------------------------------------------
    def classifier(self):
        if self._classifier is None and self.task.family == "digits":
            digits = get_task("digits-class")
            a = Assets(digits, digits.profile("fast"), self.device, self.cache_root)
            self._classifier = a.classifier()
            self.classifier_meta = a.classifier_meta
            self._digits_assets = a
        return self._classifier


def _digit_set(plan, guidance: float):
    digits = [int(d) for d in plan.set.split(":", 1)[1].split(",")]
    n = plan.limit or 100
    name = f"digits-{'forget' if plan.use == 'forget' else 'remain'}"
    reqs = tuple(Request(name, 10_000 * d + i, caption(d), DIGITS_SEED_BASE + 10_000 * d + i, 0, guidance)
                 for d in digits for i in range(n))
    return EvalSet(name, "built in", "", f"digits {','.join(map(str, digits))} x {n}", reqs, 1, 1)
