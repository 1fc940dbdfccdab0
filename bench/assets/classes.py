"""A class task's assets: data splits, the base model (raw and EMA weights), Retrain models and the UA
classifier, each cached by :mod:`bench.core.cache` under a hash of everything that determines it
(architecture, recipe, data, seed)."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.assets.training import predict, train_classifier, train_diffusion
from bench.core.cache import build_asset, default_cache_root
from bench.core.errors import BenchError
from bench.core.hashing import atomic_file, content_hash, file_sha256, user_model_hash
from bench.core.measure import PeakMemory, Stopwatch
from bench.core.precision import Precision
from bench.datasets.streams import batch_stream
from bench.models.checkpoints import check_state, load_base_model, read_classifier_state
from bench.models.classifiers import build_classifier
from bench.models.diffusion import Diffusion
from bench.models.factory import build_unet, load_unet
from bench.models.family import PixelFamily
from bench.models.nets import count_params
from bench.tasks import Profile, Recipe, Splits, Task

BASE_SEED = 1234  # the reference training seed: base seed b trains with seed BASE_SEED + b
CLASSIFIER_SEED = 0  # one classifier per task, whatever the base seed: the evaluator stays fixed
ASSET_VERSION = 2


class Assets:
    """Everything a cell needs from its task, resolved once per (task, profile, device)."""

    def __init__(self, task: Task, profile: Profile, device: torch.device, cache_root: Path | None = None,
                 base_seed: int = 0, precision: Precision | None = None, data_root: Path | None = None,
                 base_model: Path | None = None, base_weights: str = "ema", classifier_path: Path | None = None):
        self.task, self.profile, self.device = task, profile, device
        self.base_model_path = Path(base_model) if base_model else None
        self.classifier_path = Path(classifier_path) if classifier_path else None
        self.base_weights = base_weights
        self.precision = precision or Precision()
        self.base_seed = int(base_seed)
        self.training_seed = BASE_SEED + self.base_seed
        self.cache_root = Path(cache_root or default_cache_root())
        self.root = self.cache_root / task.name
        self.splits = _limit_per_class(task.load_splits(data_root, self.cache_root), profile.max_per_class)
        self.unet_config = profile.unet_config or task.unet_config
        self.classifier_arch = profile.classifier_arch or task.classifier_arch
        self.diffusion = Diffusion(device=device)
        self._base: dict[str, torch.nn.Module] = {}
        self._retrain: dict[tuple, tuple[torch.nn.Module, dict]] = {}
        self._classifier = None
        self.base_meta: dict = {}
        self.classifier_meta: dict = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.task.channels, self.task.image_size, self.task.image_size)

    def prepare(self) -> None:
        """Build (or verify) what every cell of this task loads: the base model and the classifier."""
        self.base("raw")
        self.classifier()

    def family(self, forget: int, seed: int, counts=None) -> PixelFamily:
        """The model family a method unlearns through (:mod:`bench.models.family`), for this forget class."""
        return PixelFamily(self, forget, self.task.cover_class(forget), seed)

    # --- base model -------------------------------------------------------------------------
    def base_key(self, recipe: Recipe | None = None, exclude_class: int | None = None) -> dict:
        key = {"v": ASSET_VERSION, "task": self.task.name, "variant": self.task.dataset_variant,
               "unet": self.unet_config, "classes": self.task.num_classes,
               "recipe": asdict(recipe or self.profile.pretrain), "seed": self.training_seed,
               "exclude_class": exclude_class}
        # keys of the original digits setup stay as they were, so its caches remain valid
        if self.task.arch != "diffusers-unet" or getattr(self.task, "unet_switch", None):
            key["arch"] = self.task.arch
        if self.splits.info.get("data_sha256"):
            key["data"] = self.splits.info["data_sha256"]
        if self.profile.max_per_class:
            key["max_per_class"] = self.profile.max_per_class
        if self.precision.bf16 or self.precision.compile:
            key["train_precision"] = self.precision.tag()
        return key

    def new_model(self) -> torch.nn.Module:
        torch.manual_seed(self.training_seed)
        return build_unet(self.task.arch, self.unet_config, self.task.num_classes)

    def base(self, weights: str = "raw") -> torch.nn.Module:
        """A fresh copy of the pretrained base model (``raw`` or ``ema`` weights), on the device."""
        if weights not in ("raw", "ema"):
            raise ValueError(f"weights must be 'raw' or 'ema', not {weights!r}")
        if weights not in self._base and self.base_model_path is not None:
            self._load_user_base()
        if weights not in self._base:
            folder = self.root / f"base-{content_hash(self.base_key())}"
            self.base_meta = build_asset(folder, self._train_base, "base model")
            for w in ("raw", "ema"):
                self._base[w] = self._load_unet(folder, w, "base model")
        return self._base[weights].clone()

    def _load_user_base(self) -> None:
        """``--base-model``: the user's checkpoint (checked against the task's architecture) serves as
        both the raw and the EMA base; which of its weight sets is used is ``--base-weights``."""
        path = self.base_model_path
        if not path.exists():
            raise BenchError(f"--base-model {path}: no such file or folder")
        arch = {"arch": self.task.arch, "config": self.unet_config}
        net = load_base_model(path, arch, self.task.num_classes, weights=self.base_weights)
        net = self.precision.prepare(net.to(self.device)).eval()
        self._base = {"raw": net, "ema": net}
        self.base_meta = {"kind": "user", "path": str(path), "weights": self.base_weights,
                          "sha256": user_model_hash(path), "steps": None, "params": count_params(net)}

    def _load_unet(self, folder: Path, weights: str, what: str) -> torch.nn.Module:
        try:
            net = load_unet(folder / weights, self.task.num_classes)
        except Exception as exc:
            raise BenchError(f"cannot load cached {what} {folder / weights}: {exc}; "
                             f"delete {folder} to rebuild it") from exc
        return self.precision.prepare(net.to(self.device)).eval()

    def _train_base(self, out: Path, recipe: Recipe | None = None, exclude_class: int | None = None) -> dict:
        """The task's diffusion recipe from the base seed's initialisation and data order; with
        ``exclude_class`` the class is left out of the data (Retrain). Cost is measured here."""
        recipe = recipe or self.profile.pretrain
        x, y = self.splits.train_x, self.splits.train_y
        if exclude_class is not None:
            x, y = x[y != exclude_class], y[y != exclude_class]
        net = self.new_model().to(self.device)
        what = "pretrain" if exclude_class is None else f"retrain without class {exclude_class}"
        # a killed run resumes from its last checkpoint (beside the cache folder it is building)
        partial = out.parent / ".partial" / f"{out.name.lstrip('.').rsplit('.', 1)[0]}.pt"
        start, state, earlier_s = 0, None, 0.0
        if partial.is_file():
            try:
                state = torch.load(partial, map_location="cpu", weights_only=True)
                net.load_state_dict(state["model"])
                start, earlier_s = int(state["step"]), float(state["seconds"])
                torch.set_rng_state(state["rng"])
                if self.device.type == "cuda" and state.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng"], self.device)
                print(f"bench: resuming the {what} of {self.task.name} at step {start}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs the work it held
                print(f"bench: ignoring unreadable checkpoint {partial} ({exc})", file=sys.stderr)
                net, start, state, earlier_s = self.new_model().to(self.device), 0, None, 0.0
        stream = batch_stream(x, y, recipe.batch, self.training_seed, self.device, skip=start)
        every = max(1, recipe.steps // 20) if recipe.steps >= 200 else 0

        def checkpoint(step: int, net_: torch.nn.Module, opt, ema_) -> None:
            blob = {"model": {k: v.detach().cpu() for k, v in net_.state_dict().items()}, "step": step,
                    "optimizer": opt.state_dict(), "ema": ema_.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                    "seconds": earlier_s + watch.elapsed}
            with atomic_file(partial, "wb") as f:
                torch.save(blob, f)

        with PeakMemory(self.device) as mem:
            watch = Stopwatch(self.device)
            watch.start()
            net, ema = train_diffusion(net, self.diffusion, stream, recipe,
                                       desc=f"{what} {self.task.name} (base seed {self.base_seed})",
                                       precision=self.precision, start=start,
                                       opt_state=state["optimizer"] if state else None,
                                       ema_state=state["ema"] if state else None,
                                       on_checkpoint=checkpoint, checkpoint_every=every)
            secs = earlier_s + watch.stop()
        partial.unlink(missing_ok=True)
        net.save(out / "raw")
        ema.copy_to(net.parameters())
        net.save(out / "ema")
        return {"kind": "base" if exclude_class is None else "retrain",
                "key": self.base_key(recipe, exclude_class), "train_seconds": secs, "steps": recipe.steps,
                "resumed_at": start,
                "peak_mem_mb": mem.peak_mb, "peak_mem_kind": mem.kind, "device": str(self.device),
                "params": count_params(net), "created": time.time()}

    def retrain(self, forget_class: int, steps: int | None = None,
                weights: str = "raw") -> tuple[torch.nn.Module, dict]:
        """``(fresh copy of the Retrain model, its manifest)``: the base recipe (``steps`` overrides
        its length) on every class but ``forget_class``, from the base seed; cached like the base."""
        recipe = self.profile.pretrain if steps is None else replace(self.profile.pretrain, steps=int(steps))
        key = (forget_class, recipe, weights)
        if key not in self._retrain:
            folder = self.root / f"retrain-{content_hash(self.base_key(recipe, forget_class))}"
            meta = build_asset(folder, lambda out: self._train_base(out, recipe, forget_class), "Retrain model")
            self._retrain[key] = (self._load_unet(folder, weights, "Retrain model"), meta)
        net, meta = self._retrain[key]
        return net.clone(), meta

    # --- classifier -------------------------------------------------------------------------
    def classifier(self) -> torch.nn.Module:
        if self._classifier is None and self.classifier_path is not None:
            self._classifier = self._load_user_classifier(self.classifier_path)
        if self._classifier is None:
            key = {"v": ASSET_VERSION, "task": self.task.name, "variant": self.task.dataset_variant,
                   "recipe": _recipe_key(self.classifier_recipe), "seed": CLASSIFIER_SEED,
                   "arch": type(self.make_classifier()).__name__}
            if self.classifier_arch != {"kind": "small-cnn"}:
                key["classifier_arch"] = self.classifier_arch
            if self.splits.info.get("data_sha256"):
                key["data"] = self.splits.info["data_sha256"]
            if self.profile.max_per_class:
                key["max_per_class"] = self.profile.max_per_class
            folder = self.root / f"classifier-{content_hash(key)}"
            self.classifier_meta = build_asset(folder, lambda out: self._train_classifier(out, key), "classifier")
            net = self.make_classifier()
            try:
                net.load_state_dict(load_file(folder / "classifier.safetensors"))
            except Exception as exc:
                raise BenchError(f"cannot load cached classifier {folder}: {exc}; delete it to rebuild") from exc
            self._classifier = net.to(self.device).eval()
            for p in self._classifier.parameters():
                p.requires_grad_(False)
        return self._classifier

    def _load_user_classifier(self, path: Path) -> torch.nn.Module:
        """``--classifier``: the user's weights for the task's classifier architecture (a safetensors file or a
        ``.pt``/``.pth`` state dict, loaded with ``weights_only=True``), checked key by key and shape by shape;
        its test accuracy and per-class recall are measured here on the task's test split."""
        if not path.is_file():
            raise BenchError(f"--classifier {path}: no such file")
        state = read_classifier_state(path)
        net = self.make_classifier()
        check_state(net, state, path, f"{self.task.name} classifier")
        net.load_state_dict(state)
        net = net.to(self.device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        s = self.splits
        pred = predict(net, s.test_x, batch=self.profile.eval_batch).argmax(1)
        digest = file_sha256(path)
        self.classifier_meta = {
            "kind": "user", "path": str(path), "sha256": digest, "files": {"classifier.safetensors": digest},
            "test_acc": float((pred == s.test_y).float().mean()),
            "test_recall": [float((pred[s.test_y == c] == c).float().mean()) for c in range(self.task.num_classes)],
            "params": count_params(net)}
        return net

    def _train_classifier(self, out: Path, key: dict) -> dict:
        torch.manual_seed(CLASSIFIER_SEED)
        net = self.make_classifier()
        s = self.splits
        watch = Stopwatch(self.device)
        watch.start()
        net = train_classifier(net, s.train_x, s.train_y, self.classifier_recipe, CLASSIFIER_SEED,
                               self.device, precision=self.precision)
        secs = watch.stop()
        probs = predict(net, s.test_x, batch=self.profile.eval_batch)
        pred = probs.argmax(1)
        acc = float((pred == s.test_y).float().mean())
        recall = [float((pred[s.test_y == c] == c).float().mean()) for c in range(self.task.num_classes)]
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(out / "classifier.safetensors"))
        return {"kind": "classifier", "key": key, "test_acc": acc, "test_recall": recall,
                "params": count_params(net), "train_seconds": secs, "created": time.time()}

    @property
    def classifier_recipe(self):
        r = self.task.classifier_recipe
        return replace(r, epochs=self.profile.classifier_epochs) if self.profile.classifier_epochs else r

    def make_classifier(self) -> torch.nn.Module:
        if self.profile.classifier_arch is None:
            return self.task.make_classifier()

        return build_classifier(self.classifier_arch, self.task.channels, self.task.num_classes)


def _recipe_key(recipe) -> dict:
    d = asdict(recipe)
    if not d.get("flip", True):
        del d["flip"]  # keys written before the option existed stay valid
    return d


def _limit_per_class(s, n: int | None):
    """The first ``n`` training and ``max(1, n // 5)`` test images of each class (smoke profiles)."""
    if not n:
        return s

    def keep(y: torch.Tensor, k: int) -> torch.Tensor:
        idx = [torch.nonzero(y == c).flatten()[:k] for c in torch.unique(y)]
        return torch.sort(torch.cat(idx)).values

    tr, te = keep(s.train_y, n), keep(s.test_y, max(1, n // 5))
    return Splits(s.train_x[tr], s.train_y[tr], s.test_x[te], s.test_y[te], dict(s.info))
