"""Loading the base models researchers already have, checked against the task's architecture.

Accepted inputs for :func:`load_base_model`:

* a reference training checkpoint (``.pth``/``.pt``/``.ckpt``, or ``.bin``): the list written by the
  reference trainer, ``[model_state, optimizer_state, step]`` plus ``ema_shadow`` when EMA was on;
  the model state carries DataParallel's ``module.`` prefix (stripped here). A bare state dict saved
  with ``torch.save`` is accepted too;
* a ``.safetensors`` file holding a :class:`~bench.models.refunet.RefUNet` or
  :class:`~bench.models.nets.CondUNet` state dict (for a diffusers task, a bare ``UNet2DModel`` state dict
  also works);
* a folder written by :meth:`RefUNet.save` (``config.json`` with ``"arch": "reference-unet"``);
* a diffusers folder: a pipeline folder with ``unet/`` or a bare ``UNet2DModel`` folder; for a DiT task, a
  ``DiTPipeline`` folder with ``transformer/`` or a bare ``DiTTransformer2DModel`` folder;
* the harness's own base-model folder, with ``raw/`` and ``ema/`` subfolders of either kind.

Whatever the file holds, the weights go into a freshly built model of the task's architecture (its own,
or the one ``--unet`` selects: the caller passes it in ``task_arch``), and only after their names and
shapes have been compared with it; a mismatch is one :class:`~bench.core.errors.BenchError` naming the
differing keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.models.dit import ARCH as DIT_ARCH
from bench.models.dit import CLASS_NAME as DIT_CLASS
from bench.models.factory import build_unet
from bench.models.refunet import ARCH as REFERENCE_ARCH

DIFFUSERS_ARCH = "diffusers-unet"
ARCHS = (REFERENCE_ARCH, DIFFUSERS_ARCH, DIT_ARCH)
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
NO_EMA = "this checkpoint has no EMA shadow; use --base-weights raw"
_SHOW = 5  # differing keys named in a mismatch message


def build_model(task_arch: dict, num_classes: int) -> nn.Module:
    """A freshly initialised model of the task's architecture (``{"arch": ..., "config": {...}}``)."""
    return build_unet(task_arch.get("arch"), task_arch["config"], num_classes)


def load_base_model(path: str | os.PathLike, task_arch: dict, num_classes: int, weights: str = "ema") -> nn.Module:
    """The model at ``path`` as the task's architecture, on the CPU, in eval mode.

    ``weights`` (``"ema"`` or ``"raw"``) picks the EMA shadow or the raw weights where the input holds
    both (a reference training checkpoint, or a folder with ``ema/`` and ``raw/``); files and folders
    with a single set of weights are used as they are.
    """
    path = Path(path)
    if weights not in ("ema", "raw"):
        raise BenchError(f"base weights must be 'ema' or 'raw', not {weights!r}")
    if task_arch.get("arch") not in ARCHS:
        raise BenchError(f"unknown architecture {task_arch.get('arch')!r}; expected one of {', '.join(ARCHS)}")
    if not path.exists():
        raise BenchError(f"{path}: no such checkpoint file or folder")
    state = _read_state(path, task_arch, num_classes, weights)
    net = build_model(task_arch, num_classes)
    state = _normalise_keys(state, task_arch["arch"])
    check_state(net, state, path, task_arch["arch"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype or other surprises past the name/shape check
        raise BenchError(f"{path}: cannot load the weights into the task's model: {exc}") from exc
    return net.eval()


def check_state(net: nn.Module, state: Mapping[str, Tensor], path: Path | str, arch: str = "") -> None:
    """Raise one BenchError if ``state``'s names and shapes differ from ``net``'s state dict."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    wrong = [k for k in expected if k in found and expected[k] != found[k]]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if not (wrong or missing or unexpected):
        return
    shown = [f"{k}: expected {list(expected[k])}, found {list(found[k])}" for k in wrong[:_SHOW]]
    room = _SHOW - len(shown)  # the rest split between missing and unexpected keys
    n_missing = min(len(missing), max(room - len(unexpected), (room + 1) // 2))
    shown += [f"{k}: expected {list(expected[k])}, found none" for k in missing[:n_missing]]
    shown += [f"{k}: expected none, found {list(found[k])}" for k in unexpected[:room - n_missing]]
    guess = _guess_arch(found)
    hint = ""
    if guess == DIT_ARCH and arch != DIT_ARCH:
        hint = "; the file looks like a DiT checkpoint (run it on a DiT task, e.g. digits-dit)"
    elif guess and guess != arch:
        hint = (f"; the file looks like a {guess} checkpoint (on the real image tasks, --unet "
                f"{guess.split('-')[0]} selects that architecture)")
    raise BenchError(
        f"{path}: checkpoint does not match the task's {arch or 'model'} architecture: "
        f"{len(wrong)} tensor(s) with other shapes, {len(missing)} missing, {len(unexpected)} unexpected"
        f"{hint} (" + "; ".join(shown) + ")")


def save_reference_checkpoint(net: nn.Module, path: str | os.PathLike, ema_state: Mapping[str, Tensor] | None = None,
                              step: int = 0, optimizer_state: dict | None = None) -> None:
    """Write ``[model_state, optimizer_state, step(, ema_shadow)]`` as the reference trainer does:
    model keys with DataParallel's ``module.`` prefix, EMA keys without it (the reference's EMA
    helper registers the unwrapped module). ``optimizer_state=None`` writes an empty dict, which the
    reference trainer cannot resume from but every loader here ignores."""
    path = Path(path)
    model = {f"module.{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()}
    states: list = [model, dict(optimizer_state) if optimizer_state is not None else {}, int(step)]
    if ema_state is not None:
        states.append({_strip(k): v.detach().cpu().clone() for k, v in ema_state.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(states, tmp)
    os.replace(tmp, path)


# --- reading ---------------------------------------------------------------------------------------
def _read_state(path: Path, task_arch: dict, num_classes: int, weights: str) -> dict[str, Tensor]:
    if path.is_dir():
        return _read_folder(path, task_arch, num_classes, weights)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise BenchError(f"{path}: cannot read safetensors file: {exc}") from exc
    if suffix in TORCH_SUFFIXES:
        return _read_torch(path, weights)
    raise BenchError(f"{path}: unrecognised checkpoint format (expected a folder, .safetensors, or "
                     f"{', '.join(TORCH_SUFFIXES)})")


def _read_torch(path: Path, weights: str) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"{path}: cannot read checkpoint: {exc}") from exc
    if isinstance(obj, Mapping):
        return _tensors(obj, path, "state dict")
    if not isinstance(obj, (list, tuple)) or not obj:
        raise BenchError(f"{path}: expected a reference checkpoint [model, optimizer, step(, ema)] or a state "
                         f"dict, found {type(obj).__name__}")
    if weights == "raw":
        return _tensors(obj[0], path, "model state (first element)")
    last = obj[-1]
    if len(obj) < 4 or not isinstance(last, Mapping):
        raise BenchError(f"{path}: {NO_EMA}")
    return _tensors(last, path, "EMA shadow (last element)")


def _tensors(obj, path: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise BenchError(f"{path}: the {what} is not a non-empty name -> tensor dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise BenchError(f"{path}: the {what} has non-tensor entries: {', '.join(bad[:_SHOW])}")
    return dict(obj)


def _read_folder(path: Path, task_arch: dict, num_classes: int, weights: str) -> dict[str, Tensor]:
    cfg_file = path / "config.json"
    if task_arch.get("arch") == DIT_ARCH:
        return _read_dit_folder(path, num_classes, weights)
    if (path / "unet").is_dir():
        return _read_diffusers(path / "unet")
    if not cfg_file.exists():
        if (path / weights).is_dir():  # the harness's own layout: raw/ and ema/ side by side
            return _read_folder(path / weights, task_arch, num_classes, weights)
        other = {"ema": "raw", "raw": "ema"}[weights]
        if (path / other).is_dir():
            raise BenchError(f"{path}: has no {weights}/ weights, only {other}/; use --base-weights {other}")
        raise BenchError(f"{path}: not a model folder (no config.json, unet/, raw/ or ema/)")
    try:
        meta = json.loads(cfg_file.read_text())
    except Exception as exc:
        raise BenchError(f"{cfg_file}: cannot read: {exc}") from exc
    if meta.get("arch") == REFERENCE_ARCH:
        if int(meta.get("num_classes", -1)) != num_classes:
            raise BenchError(f"{path}: model has {meta.get('num_classes')} classes, the task has {num_classes}")
        try:
            return load_file(str(path / "model.safetensors"))
        except Exception as exc:
            raise BenchError(f"{path / 'model.safetensors'}: cannot read: {exc}") from exc
    return _read_diffusers(path)


def _read_diffusers(folder: Path) -> dict[str, Tensor]:
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise BenchError(f"{folder}: cannot load a diffusers UNet2DModel: {exc}") from exc
    return {f"unet.{k}": v for k, v in unet.state_dict().items()}


def _read_dit_folder(path: Path, num_classes: int, weights: str) -> dict[str, Tensor]:
    """A DiT task's checkpoint folder: a ``DiTPipeline`` folder (``transformer/``), a bare
    ``DiTTransformer2DModel`` folder, or the harness's ``raw/``/``ema/`` layout of one."""
    if (path / "transformer").is_dir():
        path = path / "transformer"
    elif not (path / "config.json").exists() and (path / weights).is_dir():
        path = path / weights
    cfg_file = path / "config.json"
    if (path / "unet").is_dir() or not cfg_file.exists():
        what = "a U-Net pipeline folder (unet/)" if (path / "unet").is_dir() else "no config.json or transformer/"
        raise BenchError(f"{path}: not a DiT checkpoint ({what}); a DiT task needs a DiTPipeline folder with "
                         f"transformer/ or a DiTTransformer2DModel folder")
    try:
        meta = json.loads(cfg_file.read_text())
    except Exception as exc:
        raise BenchError(f"{cfg_file}: cannot read: {exc}") from exc
    if meta.get("_class_name") != DIT_CLASS:
        found = meta.get("_class_name") or meta.get("arch") or "an unnamed model"
        raise BenchError(f"{path}: holds {found}, not a {DIT_CLASS}; a DiT task needs a DiT checkpoint")
    if int(meta.get("num_embeds_ada_norm") or -1) != num_classes:
        raise BenchError(f"{path}: DiT has {meta.get('num_embeds_ada_norm')} classes, the task has {num_classes}")
    from diffusers import DiTTransformer2DModel

    try:
        dit = DiTTransformer2DModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise BenchError(f"{path}: cannot load a diffusers DiTTransformer2DModel: {exc}") from exc
    return {f"dit.{k}": v for k, v in dit.state_dict().items()}


# --- names -----------------------------------------------------------------------------------------
def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _normalise_keys(state: Mapping[str, Tensor], arch: str) -> dict[str, Tensor]:
    """Drop DataParallel's ``module.`` prefix; for a diffusers task, add ``unet.`` to a bare
    ``UNet2DModel`` state dict."""
    out = {_strip(k): v for k, v in state.items()}
    if arch == DIFFUSERS_ARCH and out and not any(k.startswith("unet.") for k in out) \
            and _guess_arch(out) == DIFFUSERS_ARCH:
        out = {f"unet.{k}": v for k, v in out.items()}
    if arch == DIT_ARCH and out and not any(k.startswith("dit.") for k in out) and _guess_arch(out) == DIT_ARCH:
        out = {f"dit.{k}": v for k, v in out.items()}
    return out


def _guess_arch(keys) -> str | None:
    keys = set(keys)
    if "temb.dense.0.weight" in keys:
        return REFERENCE_ARCH
    if any(k.startswith(("unet.time_embedding.", "time_embedding.")) for k in keys):
        return DIFFUSERS_ARCH
    if any(k.startswith(("dit.pos_embed.", "pos_embed.proj.")) for k in keys):
        return DIT_ARCH
    return None


def read_classifier_state(path: Path) -> dict[str, Tensor]:
    """A user classifier's weights (``--classifier``): safetensors or a weights-only torch file, unwrapped from
    ``state_dict``/``model`` and DataParallel's ``module.`` prefix; one clear error when it is neither."""
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                       weights_only=True)
    except Exception as exc:
        raise BenchError(f"--classifier {path}: cannot read it as safetensors or a weights-only torch file "
                         f"({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise BenchError(f"--classifier {path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}
