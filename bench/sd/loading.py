"""Validating and loading a user's Stable Diffusion v1.x diffusers folder (spec sd-concepts.md §0.2, §2.1).

Every validation failure is one :class:`~bench.core.errors.BenchError` line naming the missing or wrong item.
Configs are read and checked before weight files are looked at, so config-only folders can be checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.core.hashing import file_sha256

# ---------------------------------------------------------------------------------------------- constants

SD_CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" with SD's CLIP BPE
CONVERT_HINT = "diffusers' convert_original_stable_diffusion_to_diffusers.py"

# component -> (label, weight stem, extra file named in the "place" hint)
_WEIGHTED = {
    "unet": ("the UNet", "diffusion_pytorch_model"),
    "vae": ("the VAE", "diffusion_pytorch_model"),
    "text_encoder": ("the text encoder", "model"),
}
_PICKLE_STEMS = {"diffusion_pytorch_model": "diffusion_pytorch_model", "model": "pytorch_model"}
_CONFIG_NAMES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "scheduler": "scheduler_config.json",
}

# strict SD v1.x values (§2.1)
_V1_UNET = {
    "in_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "attention_head_dim": 8,
    "sample_size": 64,
}
_V1_TEXT = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}
_V1_VAE = {"latent_channels": 4, "scaling_factor": 0.18215}
_V1_SCHED = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


@dataclass
class SDParts:
    """A loaded SD folder: UNet (trainable as loaded), frozen VAE and text encoder, tokenizer, scheduler config."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    vae_scale_factor: int
    scaling_factor: float
    path: Path
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- helpers


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"{file} is not a readable JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise BenchError(f"{file} is not a JSON object")
    return data


def _class_defaults(cls) -> dict:
    """Default values of a diffusers class's ``__init__`` keywords (what a key absent from a config takes)."""
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if p.default is not inspect.Parameter.empty:
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def _with_defaults(component: str, cfg: dict) -> dict:
    """``cfg`` completed with the library defaults of its class (0.18215 for the VAE, epsilon, ...)."""
    defaults: dict = {}
    try:
        if component == "text_encoder":
            from transformers import CLIPTextConfig

            defaults = CLIPTextConfig().to_dict()
        else:
            import diffusers

            name = cfg.get("_class_name") or {
                "unet": "UNet2DConditionModel",
                "vae": "AutoencoderKL",
                "scheduler": "DDIMScheduler",
            }[component]
            cls = getattr(diffusers, str(name), None)
            if cls is not None:
                defaults = _class_defaults(cls)
    except Exception:  # defaults are a convenience; a missing class is caught by the checks below
        defaults = {}
    if component == "vae":
        defaults.setdefault("scaling_factor", 0.18215)
    if component == "scheduler":
        defaults.setdefault("prediction_type", "epsilon")
    return {**defaults, **cfg}


def _weight_files(comp_dir: Path, stem: str) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickled .bin files) that ``from_pretrained`` would read for one component."""
    st = comp_dir / f"{stem}.safetensors"
    st_index = comp_dir / f"{stem}.safetensors.index.json"
    pk_stem = _PICKLE_STEMS[stem]
    pk = comp_dir / f"{pk_stem}.bin"
    pk_index = comp_dir / f"{pk_stem}.bin.index.json"

    def resolve(single: Path, index: Path) -> list[Path]:
        if single.is_file():
            return [single]
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            return [comp_dir / s for s in shards]
        return []

    return resolve(st, st_index), resolve(pk, pk_index)


def _is_single_file_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".ckpt", ".safetensors", ".pt", ".pth")


def _tokenize_ids(tok, text: str) -> list[int]:
    return list(tok(text).input_ids)


# ---------------------------------------------------------------------------------------------- validation


def validate_sd_folder(path: Path, *, strict_v1: bool = True, allow_pickle: bool = False) -> dict:
    """Check a diffusers SD folder as §2.1 asks; raise one-line :class:`BenchError` on the first problem.

    ``strict_v1=False`` (the micro model and harness-trained tiny models) keeps only the structural checks:
    folders and configs present and readable, ``prediction_type`` epsilon, weights as safetensors (or .bin
    with ``allow_pickle``). Returns ``{"configs": {component: config with defaults}, "weights":
    {component: [relative paths]}, "pickle": bool}``.
    """
    path = Path(path)
    if _is_single_file_checkpoint(path):
        kind = "a CompVis .ckpt file" if path.suffix.lower() == ".ckpt" else f"a single-file {path.suffix} checkpoint"
        raise BenchError(f"{path} is {kind}: convert it to a diffusers folder first ({CONVERT_HINT})")
    if not path.is_dir():
        raise BenchError(f"base model folder {path} does not exist")
    if not (path / "model_index.json").is_file():
        ckpts = sorted(p.name for p in path.glob("*.ckpt"))
        if ckpts:
            raise BenchError(
                f"{path / ckpts[0]} is a CompVis .ckpt file: convert it to a diffusers folder first ({CONVERT_HINT})"
            )
        raise BenchError(f"place model_index.json under {path}/ (a diffusers StableDiffusionPipeline folder)")

    # 1. structure: every component folder with its config (and tokenizer files)
    for comp, (label, stem) in _WEIGHTED.items():
        if not (path / comp / "config.json").is_file():
            raise BenchError(f"place {label} under {path}/{comp}/ ({stem}.safetensors and config.json)")
    tok_dir = path / "tokenizer"
    if not ((tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file()) and not (
        tok_dir / "tokenizer.json"
    ).is_file():
        raise BenchError(f"place the tokenizer under {path}/tokenizer/ (vocab.json and merges.txt)")
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        raise BenchError(f"place the scheduler under {path}/scheduler/ (scheduler_config.json)")

    # 2. configs (read before any weight file)
    index = _read_json(path / "model_index.json")
    raw = {comp: _read_json(path / comp / name) for comp, name in _CONFIG_NAMES.items()}
    cfg = {comp: _with_defaults(comp, c) for comp, c in raw.items()}

    pred = cfg["scheduler"].get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise BenchError(
            f"prediction_type {pred} is not supported: SD v1.x is epsilon ({path}/scheduler/scheduler_config.json)"
        )
    if strict_v1:
        _check_v1(path, index, cfg)

    # 3. weight files
    weights: dict[str, list[str]] = {}
    used_pickle = False
    for comp, (label, stem) in _WEIGHTED.items():
        comp_dir = path / comp
        st, pk = _weight_files(comp_dir, stem)
        missing = [p for p in st + pk if not p.is_file()]
        if missing:
            raise BenchError(f"place {missing[0].name} under {comp_dir}/ (listed in its index file)")
        if st:
            files = st
        elif pk:
            if not allow_pickle:
                raise BenchError(
                    f".bin weights without safetensors are refused unless --allow-pickle ({comp_dir}/{pk[0].name})"
                )
            files, used_pickle = pk, True
        elif any(comp_dir.glob("*.ckpt")):
            raise BenchError(
                f"{comp_dir} holds a CompVis .ckpt file: convert it to a diffusers folder first ({CONVERT_HINT})"
            )
        else:
            raise BenchError(f"place {label} under {comp_dir}/ ({stem}.safetensors and config.json)")
        weights[comp] = [p.relative_to(path).as_posix() for p in files]

    # 4. tokenizer ids (strict only: needs SD's real BPE)
    if strict_v1:
        from transformers import CLIPTokenizer

        try:
            tok = CLIPTokenizer.from_pretrained(str(tok_dir))
        except Exception as e:
            raise BenchError(f"the tokenizer in {tok_dir}/ cannot be loaded ({type(e).__name__}: {e})") from None
        ids = _tokenize_ids(tok, "a photo of a cat")
        if ids != SD_CAT_IDS:
            raise BenchError(
                f"the tokenizer in {tok_dir}/ gives {ids} for 'a photo of a cat', not SD v1.x's {SD_CAT_IDS}"
            )
    return {"configs": cfg, "weights": weights, "pickle": used_pickle}


def _check_v1(path: Path, index: dict, cfg: dict) -> None:
    cls = index.get("_class_name")
    if cls != "StableDiffusionPipeline":
        raise BenchError(f"{path}/model_index.json: _class_name {cls} is not StableDiffusionPipeline")
    unet = cfg["unet"]
    xdim = unet.get("cross_attention_dim")
    if isinstance(xdim, (list, tuple)):
        xdim = xdim[0] if len(set(xdim)) == 1 else list(xdim)
    if unet.get("addition_embed_type") == "text_time" or xdim == 2048:
        raise BenchError(f"{path}/unet is an SDXL UNet; this task needs SD v1.x (cross_attention_dim 768)")
    if xdim == 1024:
        raise BenchError(f"cross_attention_dim 1024 is Stable Diffusion 2.x; this task needs v1.x (768) ({path}/unet)")
    if xdim != 768:
        raise BenchError(f"{path}/unet/config.json: cross_attention_dim {xdim}; this task needs SD v1.x (768)")
    _expect(path / "unet" / "config.json", unet, _V1_UNET)
    _expect(path / "text_encoder" / "config.json", cfg["text_encoder"], _V1_TEXT)
    _expect(path / "vae" / "config.json", cfg["vae"], _V1_VAE)
    _expect(path / "scheduler" / "scheduler_config.json", cfg["scheduler"], _V1_SCHED)


def _expect(file: Path, cfg: dict, wanted: dict) -> None:
    for key, want in wanted.items():
        got = cfg.get(key)
        if isinstance(got, tuple):
            got = list(got)
        if isinstance(want, float) and isinstance(got, (int, float)):
            ok = abs(got - want) <= 1e-9 * max(1.0, abs(want))
        else:
            ok = got == want
        if not ok:
            raise BenchError(f"{file}: {key} {got} is not SD v1.x's {want}")


# ---------------------------------------------------------------------------------------------- hashes

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(file: Path) -> str:
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = file_sha256(file)
    return _HASH_CACHE[key]


def folder_hashes(path: Path, *, allow_pickle: bool = True) -> dict[str, str]:
    """SHA-256 of every weight file the loader reads (UNet, VAE, text encoder), keyed by relative path, sorted.

    Safetensors files are preferred; ``.bin`` files count only where a component has no safetensors (the
    files ``load_sd`` would read). Hashes are cached in memory by (path, size, mtime).
    """
    path = Path(path)
    out: dict[str, str] = {}
    for comp, (_, stem) in _WEIGHTED.items():
        st, pk = _weight_files(path / comp, stem)
        for f in st or (pk if allow_pickle else []):
            out[f.relative_to(path).as_posix()] = _cached_sha256(f)
    return dict(sorted(out.items()))


def base_hash(hashes: dict[str, str]) -> str:
    """SHA-256 of the sorted per-file hashes (one per line): the same weights give the same base hash."""
    return hashlib.sha256("\n".join(sorted(hashes.values())).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def load_sd(
    path: Path,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    strict_v1: bool = True,
    allow_pickle: bool = False,
) -> SDParts:
    """Validate ``path`` then load its components offline; VAE and text encoder frozen (eval, no grad).

    Each component is read with ``from_pretrained(local_files_only=True)`` and safetensors (``.bin`` only
    where a component has no safetensors and ``allow_pickle`` is set); the tokenizer only through
    ``CLIPTokenizer.from_pretrained(path / "tokenizer")``. ``info`` holds ``base_hash``, ``file_hashes``,
    ``weights`` (relative paths read), ``pickle`` and ``strict_v1``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    checked = validate_sd_folder(path, strict_v1=strict_v1, allow_pickle=allow_pickle)
    use_st = {comp: files[0].endswith(".safetensors") for comp, files in checked["weights"].items()}
    with _offline():
        unet = UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", local_files_only=True, use_safetensors=use_st["unet"], torch_dtype=dtype
        )
        vae = AutoencoderKL.from_pretrained(
            path, subfolder="vae", local_files_only=True, use_safetensors=use_st["vae"], torch_dtype=dtype
        )
        text = CLIPTextModel.from_pretrained(
            str(path / "text_encoder"), local_files_only=True, use_safetensors=use_st["text_encoder"], dtype=dtype
        )
        tok = CLIPTokenizer.from_pretrained(str(path / "tokenizer"))
    unet = unet.to(device)
    vae = vae.to(device).requires_grad_(False).eval()
    text = text.to(device).requires_grad_(False).eval()
    hashes = folder_hashes(path, allow_pickle=checked["pickle"])
    sched_cfg = {k: v for k, v in _read_json(path / "scheduler" / "scheduler_config.json").items()}
    sched_cfg.setdefault("prediction_type", "epsilon")
    info = {
        "base_hash": base_hash(hashes),
        "file_hashes": hashes,
        "weights": checked["weights"],
        "pickle": checked["pickle"],
        "strict_v1": strict_v1,
    }
    return SDParts(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        scheduler_config=sched_cfg,
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        scaling_factor=float(getattr(vae.config, "scaling_factor", None) or 0.18215),
        path=path,
        info=info,
    )


# ---------------------------------------------------------------------------------------------- schedule


def sd_schedule(config: dict | None = None, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ᾱ_t for t = 0..T−1 of an SD scheduler config (defaults: T 1000, β 0.00085..0.012, scaled_linear).

    ``scaled_linear``: β_t = linspace(√β_start, √β_end, T)²; ``linear``: β_t = linspace(β_start, β_end, T).
    Computed in float64 (as CompVis), returned as ``dtype``. √ᾱ_0 = 0.99957, √ᾱ_625 = 0.37117,
    √ᾱ_999 = 0.06826.
    """
    cfg = dict(config or {})
    T = int(cfg.get("num_train_timesteps", 1000))
    b0 = float(cfg.get("beta_start", 0.00085))
    b1 = float(cfg.get("beta_end", 0.012))
    kind = cfg.get("beta_schedule", "scaled_linear")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    else:
        raise BenchError(f"beta_schedule {kind} is not supported (SD v1.x uses scaled_linear)")
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


# ---------------------------------------------------------------------------------------------- parameter sets

PARAM_SETS = ("xattn", "xattn-kv", "noxattn", "full", "esd-u-2024")
_NOXATTN_PREFIXES = ("time_embedding.", "conv_norm_out.", "conv_out.")


def cross_attention_kv(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The key and value projections of every cross-attention (``attn2.to_k``, ``attn2.to_v``): the only UNet
    weights that read the text (UCE edits them, CA trains them, ``xattn-kv``)."""
    return [m for name, m in unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))]


def param_set(unet: torch.nn.Module, name: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The UNet parameters a method trains, by diffusers names (§0.2), in ``named_parameters`` order.

    - ``xattn`` (ESD-x): names containing ``attn2`` (cross-attention q, k, v, out).
    - ``xattn-kv`` (CA's ``crossattn_kv``): the cross-attention key and value projections (``attn2.to_k``,
      ``attn2.to_v``), the only weights that read the text.
    - ``noxattn`` (ESD-u, SA nudity): all except names containing ``attn2`` and names starting with
      ``time_embedding.``, ``conv_norm_out.``, ``conv_out.`` (CompVis ``time_embed``, ``out.``).
    - ``full`` (SalUn, GA, SA celebrity): every UNet parameter.
    - ``esd-u-2024`` (ESD's 2024 diffusers rewrite): weight and bias of ``Linear``/``Conv2d`` modules whose
      name lacks ``attn2`` (norms excluded; time embedding and ``conv_out`` included).

    Micro SD: ``xattn`` 20 tensors (6,208 elements), ``noxattn`` 180 of 208 tensors.
    """
    named = list(unet.named_parameters())
    if name == "full":
        return named
    if name == "xattn":
        return [(n, p) for n, p in named if "attn2" in n]
    if name == "xattn-kv":
        kv = {id(p) for m in cross_attention_kv(unet) for p in m.parameters()}
        return [(n, p) for n, p in named if id(p) in kv]
    if name == "noxattn":
        return [(n, p) for n, p in named if "attn2" not in n and not n.startswith(_NOXATTN_PREFIXES)]
    if name == "esd-u-2024":
        keep: set[int] = set()
        for mod_name, mod in unet.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and "attn2" not in mod_name:
                for attr in ("weight", "bias"):
                    p = getattr(mod, attr, None)
                    if isinstance(p, torch.nn.Parameter):
                        keep.add(id(p))
        return [(n, p) for n, p in named if id(p) in keep]
    raise BenchError(f"unknown parameter set {name!r}; choose one of {', '.join(PARAM_SETS)}")
