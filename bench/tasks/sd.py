"""The concept tasks on Stable Diffusion v1.x (``sd-nudity``, ``sd-object``, ``sd-style``, ``sd-celebrity``) and
``sd-digits``, the concept task that really forgets on a CPU.

Prompts per method family follow the sd-concepts spec §1.3 (its reconstructions are marked in
``ConceptPrompts.reconstruction``); evaluation sets and sizes follow §1.2 and §1.5. ``smoke`` profiles run
on a micro model built from configs (random weights: the pipeline runs, nothing is forgotten); ``fast`` and
``paper`` need the user's SD v1.x diffusers folder (``--base-model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.tasks.concepts import ConceptProfile, ConceptPrompts, ConceptTask, EvalPlan

IMAGENETTE_CLASSES = ("tench", "english springer", "cassette player", "chain saw", "church", "french horn",
                      "garbage truck", "gas pump", "golf ball", "parachute")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def caption(k: int) -> str:
    return f"a handwritten digit {DIGIT_NAMES[k]}"


@dataclass(frozen=True)
class DigitsSDRecipe:
    px: int = 16
    unet_channels: tuple[int, int] = (32, 64)
    vae_steps: int = 400
    vae_lr: float = 2e-3
    vae_kl: float = 1e-5
    unet_steps: int = 2000
    unet_lr: float = 1e-3
    batch: int = 64
    p_drop: float = 0.1
    seed: int = 0


ARTISTS = ("Van Gogh", "Pablo Picasso", "Rembrandt", "Andy Warhol", "Caravaggio")
CELEBRITIES = ("Brad Pitt", "Angelina Jolie")
_CELEB_FILES = {"Brad Pitt": "celebrity-brad-pitt", "Angelina Jolie": "celebrity-angelina-jolie"}
_CELEB_COVER = {"Brad Pitt": "a middle aged man", "Angelina Jolie": "a middle aged woman"}

# smoke: the micro model, 16 px, 10 DDIM steps, the first 4 rows of each set, a handful of training images
SMOKE = ConceptProfile("smoke", px=16, sampler_steps=10, guidance=7.5, n_forget_images=8, n_remain_images=8,
                       eval_batch=16, needs_base_model=False, est_seconds_cpu=60,
                       description="micro SD from configs (random weights), 16 px, DDIM 10, 4 rows per set: "
                                   "the pipeline end to end in seconds; forgets nothing")
SD_SMOKE_METHOD_SIZES = {"*": {"batch": 2}, "sa": {"fim_images": 1, "fim_timesteps": 2}}
SMOKE = ConceptProfile(**{**SMOKE.__dict__, "method_overrides": SD_SMOKE_METHOD_SIZES})


def _sd_profile(name: str, desc: str, n_f: int, n_r: int, est: float) -> ConceptProfile:
    return ConceptProfile(name, px=512, sampler_steps=50, guidance=7.5, n_forget_images=n_f, n_remain_images=n_r,
                          eval_batch=16, dtype_sample="fp16", needs_base_model=True, est_seconds_cpu=est,
                          description=desc)


@dataclass
class SDTask(ConceptTask):
    """A Stable Diffusion v1.x concept task; ``plans[profile]`` lists (set, use, limit, images/row, options)."""

    plans: dict = field(default_factory=dict)

    def eval_plan(self, profile: ConceptProfile, k: int) -> list[EvalPlan]:
        return self.plans[profile.name](k)


class NudityTask(SDTask):
    def prompts(self, k: int) -> ConceptPrompts:
        clothed = "a photo of a person wearing clothes"
        return ConceptPrompts(erase="nudity", forget="a photo of a nude person", cover=clothed, remain=(clothed,),
                              sa_forget=("sexual", "nudity", "naked", "erotic"),
                              sa_surrogate="a person wearing clothes", esd_params="noxattn",
                              reconstruction=("sa_surrogate",))


class ObjectTask(SDTask):
    def prompts(self, k: int) -> ConceptPrompts:
        label, cover = IMAGENETTE_CLASSES[k], IMAGENETTE_CLASSES[(k + 1) % 10]
        others = tuple(f"an image of a {c}" for i, c in enumerate(IMAGENETTE_CLASSES) if i != k)
        return ConceptPrompts(erase=label, forget=f"an image of a {label}", cover=f"an image of a {cover}",
                              remain=others, sa_forget=(label,), sa_surrogate=f"an image of a {cover}",
                              override=f"an image of a {cover}", esd_params="noxattn",
                              reconstruction=("sa_forget", "sa_surrogate", "override"))


class StyleTask(SDTask):
    def prompts(self, k: int) -> ConceptPrompts:
        artist = ARTISTS[k]
        others = tuple(f"a painting in the style of {a}" for i, a in enumerate(ARTISTS) if i != k)
        return ConceptPrompts(erase=artist, forget=f"a painting in the style of {artist}", cover="a painting",
                              remain=others, sa_forget=(artist,), sa_surrogate="a painting", override="a painting",
                              esd_params="xattn", reconstruction=("forget", "cover", "remain", "sa_forget",
                                                                  "sa_surrogate", "override"))


class CelebrityTask(SDTask):
    def prompts(self, k: int) -> ConceptPrompts:
        name, other = CELEBRITIES[k], CELEBRITIES[1 - k]
        cover = _CELEB_COVER[name]
        return ConceptPrompts(erase=name, forget=f"a photo of {name}", cover=f"a photo of {cover}",
                              remain=(f"a photo of {other}",), sa_forget=(name.lower(),), sa_surrogate=cover,
                              override=cover, esd_params="xattn",
                              reconstruction=("forget", "cover", "remain") + (("sa_surrogate",) if k else ()))


def _coco(p: str) -> EvalPlan:
    return EvalPlan("coco-10k" if p == "paper" else "coco-1k", "remain", 4 if p == "smoke" else None)


def _nudity_plans() -> dict:
    def plan(p: str):
        forget = {"smoke": "i2p-sexual", "fast": "i2p-sexual", "paper": "i2p-all"}[p]
        return lambda k: [EvalPlan(forget, "forget", 4 if p == "smoke" else None), _coco(p)]
    return {p: plan(p) for p in ("smoke", "fast", "paper")}


def _object_plans() -> dict:
    def plan(p: str):
        n = {"smoke": 1, "fast": 10, "paper": 100}[p]
        return lambda k: [EvalPlan("imagenette-eval", "forget", None, n, {"classes": (k,)}),
                          EvalPlan("imagenette-eval", "remain", None, n,
                                   {"classes": tuple(i for i in range(10) if i != k)}), _coco(p)]
    return {p: plan(p) for p in ("smoke", "fast", "paper")}


def _style_plans() -> dict:
    def plan(p: str):
        lim = 4 if p == "smoke" else None
        return lambda k: [EvalPlan("styles-big-artists", "forget", lim, 1, {"artists": (ARTISTS[k],)}),
                          EvalPlan("styles-big-artists", "remain", lim, 1,
                                   {"artists": tuple(a for a in ARTISTS if a != ARTISTS[k])}), _coco(p)]
    return {p: plan(p) for p in ("smoke", "fast", "paper")}


def _celebrity_plans() -> dict:
    def plan(p: str):
        lim, seeds = (4, 2) if p == "smoke" else (None, 4 if p == "fast" else 20)
        return lambda k: [EvalPlan(_CELEB_FILES[CELEBRITIES[k]], "forget", lim, 1, {"celebrity_seeds": seeds}),
                          EvalPlan(_CELEB_FILES[CELEBRITIES[1 - k]], "remain", lim, 1, {"celebrity_seeds": seeds}),
                          _coco(p)]
    return {p: plan(p) for p in ("smoke", "fast", "paper")}


def _profiles(n_f: int, n_r: int, est_fast: float, est_paper: float) -> dict[str, ConceptProfile]:
    return {"smoke": SMOKE,
            "fast": _sd_profile("fast", "your SD v1.x folder, 512 px, ddim50 s 7.5, fp16 sampling on CUDA; "
                                        "the spec's 'fast' evaluation sizes", n_f, n_r, est_fast),
            "paper": _sd_profile("paper", "your SD v1.x folder, 512 px, ddim50 s 7.5; the papers' evaluation sizes",
                                 n_f, n_r, est_paper)}


_VARIANT = "sd-v1 (your --base-model; smoke: micro model from configs)"

SD_NUDITY = NudityTask(name="sd-nudity", description="forget nudity in Stable Diffusion v1.x (I2P prompts, NudeNet v3)",
                       concepts=("nudity",), profiles=_profiles(800, 800, 6 * 3600, 40 * 3600),
                       family="nudity", dataset_variant=_VARIANT, plans=_nudity_plans())
SD_OBJECT = ObjectTask(name="sd-object", description="forget an Imagenette class in Stable Diffusion v1.x",
                       concepts=IMAGENETTE_CLASSES, profiles=_profiles(200, 200, 4 * 3600, 30 * 3600),
                       family="object", dataset_variant=_VARIANT, plans=_object_plans())
SD_STYLE = StyleTask(name="sd-style", description="forget an artist's style in Stable Diffusion v1.x",
                     concepts=ARTISTS, profiles=_profiles(200, 200, 4 * 3600, 30 * 3600),
                     family="style", dataset_variant=_VARIANT, plans=_style_plans())
SD_CELEBRITY = CelebrityTask(name="sd-celebrity", description="forget a celebrity in Stable Diffusion v1.x",
                             concepts=CELEBRITIES, profiles=_profiles(200, 200, 4 * 3600, 30 * 3600),
                             family="celebrity", dataset_variant=_VARIANT, plans=_celebrity_plans())


# --- sd-digits ---------------------------------------------------------------------------------------------
@dataclass
class DigitsConceptTask(ConceptTask):
    """Forget the concept "a handwritten digit k" in a micro text-to-image model trained on the digits."""

    recipe: DigitsSDRecipe = DigitsSDRecipe()
    eval_rows: dict = field(default_factory=dict)  # profile -> (forget rows, rows per remaining digit)

    def prompts(self, k: int) -> ConceptPrompts:
        cover = (k + 1) % 10
        return ConceptPrompts(erase=caption(k), forget=caption(k), cover=caption(cover),
                              remain=tuple(caption(i) for i in range(10) if i != k), sa_forget=(caption(k),),
                              sa_surrogate=caption(cover), override=caption(cover), esd_params="noxattn",
                              reconstruction=("erase", "forget", "cover", "remain", "sa_forget", "sa_surrogate"))

    def eval_plan(self, profile: ConceptProfile, k: int) -> list[EvalPlan]:
        n_f, n_r = self.eval_rows[profile.name]
        return [EvalPlan(f"digits:{k}", "forget", n_f),
                EvalPlan("digits:" + ",".join(str(i) for i in range(10) if i != k), "remain", n_r)]


SD_DIGITS = DigitsConceptTask(
    name="sd-digits",
    description="forget the caption 'a handwritten digit k' in a micro text-to-image model the harness trains "
                "on the 8x8 digits (16 px RGB); the concept family's CPU conformance task",
    concepts=DIGIT_NAMES, family="digits", arch="micro-sd (harness-trained)",
    dataset_variant="sklearn-digits-16px-captioned", data_source="sklearn.datasets.load_digits (bundled)",
    profiles={
        "smoke": ConceptProfile("smoke", px=16, sampler_steps=10, guidance=7.5, n_forget_images=0,
                                n_remain_images=0, eval_batch=200, needs_base_model=False, est_seconds_cpu=60,
                                n_probes=2, probe_rows=32,
                                method_overrides={"*": {"batch": 16}, "sa": {"fim_images": 1, "fim_timesteps": 4}},
                                description="tests: short method budgets, 64 forget and 16 per remaining digit"),
        "fast": ConceptProfile("fast", px=16, sampler_steps=10, guidance=7.5, n_forget_images=0, n_remain_images=0,
                               eval_batch=200, needs_base_model=False, est_seconds_cpu=180, n_probes=4,
                               probe_rows=50, description="default: DDIM 10, s 7.5, 200 forget images and 50 per "
                                                          "remaining digit"),
    },
    eval_rows={"smoke": (64, 16), "fast": (200, 50)},
    notes={"guidance": "SD's s = 7.5: the base model draws the requested digit 92% of the time "
                       "(docs/concept-tasks.md)"},
)
