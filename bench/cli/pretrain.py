"""``bench pretrain``: train (or verify) a task's cached base model and classifier, and the calibration
measurements made on them (``--curve``, ``--guidance-sweep``, ``--fid-delta``, ``--export``)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from bench.cli import catalog
from bench.cli.args import device_argument, fid_arguments, ints, options_from_args, unet_argument
from bench.core.errors import BenchError
from bench.core.paths import ensure_writable_dir
from bench.engine.options import DEFAULT_OUT

HELP = "train (or verify) the cached base model and classifier of a task"


def add_parser(sub) -> None:
    pt = sub.add_parser("pretrain", help=HELP, description=HELP)
    pt.add_argument("--task", required=True)
    pt.add_argument("--profile", default="fast")
    device_argument(pt, "device (default: cpu)")
    pt.add_argument("--cache", default=None, help="asset cache (default: $BENCH_CACHE or ~/.cache/unlearn-bench)")
    pt.add_argument("--base-seed", type=ints("--base-seed"), default=[0],
                    help="which base model(s) (pretraining seed 1234 + b)")
    pt.add_argument("--curve", type=ints("--curve"), default=None, metavar="STEPS",
                    help="instead: train base models of these lengths (e.g. 400,800,1600,3200), evaluate each as "
                         "the Original row and FT from it, and write base_curve.{csv,md,png}")
    pt.add_argument("--out", default=str(DEFAULT_OUT), help="results folder of --curve, --guidance-sweep and "
                                                            "--fid-delta (written to <out>/<task>/)")
    pt.add_argument("--no-ft", action="store_true", help="with --curve: evaluate the Original only")
    pt.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                    help="with --curve: use this learning-rate schedule instead of the task's (files get a suffix)")
    pt.add_argument("--guidance-sweep", default=None, metavar="W,W,...",
                    help="then sample the base model at these guidance weights (raw and EMA weights), score them "
                         "with the task classifier and write <out>/<task>/guidance_sweep.md")
    pt.add_argument("--sweep-samples", type=int, default=40, metavar="N",
                    help="with --guidance-sweep: images per class")
    pt.add_argument("--fid-delta", default=None, metavar="N[,M]",
                    help="then measure how far the profile's FID is from the paper protocol's on this base model: "
                         "the profile's sampler at its own count (3 seeds) and at N per class, the paper sampler at "
                         "M per class (default N; the paper's count if N is 'paper'); writes <out>/<task>/fid_delta.md")
    pt.add_argument("--steps", type=int, default=None, metavar="N",
                    help="pretraining iterations (default: the profile's recipe); same as run's --pretrain-steps")
    pt.add_argument("--export", default=None, metavar="FILE",
                    help="also write the base model as a checkpoint in the reference training code's format")
    pt.add_argument("--data-root", default=None, metavar="PATH", help="dataset files (see 'run --help')")
    pt.add_argument("--precision", default="fp32", metavar="OPTS", help="as for run")
    unet_argument(pt)
    fid_arguments(pt)  # for --fid-delta
    pt.set_defaults(command=command)


def command(args) -> int:
    if args.steps is not None and args.steps < 1:
        raise BenchError(f"--steps must be positive, got {args.steps}")
    catalog.quick_check_task(args.task, args.profile)
    from bench.engine.driver import Driver  # torch and diffusers: only once a command runs

    options = options_from_args(args).replace(pretrain_steps=args.steps)
    ensure_writable_dir(options.cache, "--cache")
    driver = Driver(options)
    task = driver.task(args.task)
    profile = driver.profile(task, args.profile)
    if getattr(task, "kind", "class") == "concept":
        return _concept(args, driver, task)
    if getattr(task, "latent", False):
        raise BenchError(f"{task.name}: nothing to pretrain; the base model, its VAE and the classifier are yours "
                         "(--base-model, --classifier): run the methods with 'bench run' (docs/dit.md)")
    if args.curve:
        return _curve(args, options, task, profile)
    from bench.engine.calibrate import fid_protocol_delta, guidance_sweep, write_fid_delta, write_guidance_sweep
    from bench.models.checkpoints import save_reference_checkpoint

    delta_plan = _fid_delta_plan(args, task, profile, options.inception_weights)
    out = options.out / task.name
    for b in args.base_seed:
        assets = driver.assets(task, args.profile, b)
        t0 = time.perf_counter()
        assets.prepare()
        print(f"base seed {b}: base model {assets.base_meta['steps']} steps, trained in "
              f"{assets.base_meta['train_seconds']:.1f} s; classifier test accuracy "
              f"{assets.classifier_meta['test_acc']:.3f} ({time.perf_counter() - t0:.1f} s)")
        if args.export:
            save_reference_checkpoint(assets.base("raw"), Path(args.export), ema_state=assets.base("ema").state_dict(),
                                      step=int(assets.base_meta["steps"]))
            print(f"wrote {args.export} (reference format: [model_state, optimizer_state, step, ema_shadow])")
        if args.guidance_sweep:
            try:
                ws = [float(v) for v in args.guidance_sweep.split(",") if v.strip()]
            except ValueError:
                raise BenchError(f"--guidance-sweep expects numbers like 0.5,1,2, "
                                 f"got {args.guidance_sweep!r}") from None
            df = guidance_sweep(assets, ("raw", "ema"), ws, args.sweep_samples, seed=5, forget=task.default_forget)
            print(write_guidance_sweep(df, ensure_writable_dir(out, "--out"),
                                       f"{task.name}: base model (base seed {b}, {profile.pretrain.steps} steps) vs "
                                       f"guidance weight; {profile.sampler_steps}-step sampler, eta {profile.eta}, "
                                       f"{args.sweep_samples} images per class"))
        if delta_plan:
            paper, count_n, sampler_n = delta_plan
            df = fid_protocol_delta(assets, paper, count_n, sampler_n, task.default_forget)
            print(write_fid_delta(df, profile.n_per_class, count_n, ensure_writable_dir(out, "--out"),
                                  f"{task.name}: {profile.name} FID vs the paper protocol's, one base model (base seed "
                                  f"{b}, {assets.base_meta['steps']} steps), forget class {task.default_forget}"))
    return 0


def _concept(args, driver, task) -> int:
    """A concept task's model (sd-digits: trained by the harness) and classifier; the calibration options are
    the class tasks'."""
    for flag in ("curve", "guidance_sweep", "fid_delta", "export", "steps"):
        if getattr(args, flag):
            raise BenchError(f"--{flag.replace('_', '-')} applies to class tasks; {task.name} is a concept task")
    assets = driver.assets(task, args.profile)
    t0 = time.perf_counter()
    assets.prepare()
    print(f"{task.name}: model {assets.base_meta.get('path', '')} ready ({time.perf_counter() - t0:.1f} s)")
    return 0


def _curve(args, options, task, profile) -> int:
    from bench.engine.calibrate import base_curve, write_curve
    from bench.engine.plugins import load_all

    load_all()
    out = ensure_writable_dir(options.out, "--out") / task.name
    suffix = ""
    if args.lr_schedule and args.lr_schedule != profile.pretrain.lr_schedule:
        profile = dataclasses.replace(profile, pretrain=dataclasses.replace(profile.pretrain,
                                                                            lr_schedule=args.lr_schedule))
        task = dataclasses.replace(task, profiles={**task.profiles, args.profile: profile})
        suffix = f"_{args.lr_schedule}"
    opts = options.replace(out=out / f"base-curve-runs{suffix}", progress=not os.environ.get("TQDM_DISABLE"))
    df = base_curve(task, args.profile, args.curve, args.base_seed, opts, with_ft=not args.no_ft)
    r = profile.pretrain
    print(write_curve(df, out, f"{task.name}: base model vs pretraining length ({r.optimizer} lr {r.lr}, "
                               f"{r.lr_schedule} schedule, batch {r.batch}; {args.profile} evaluation)", suffix))
    return 0


def _fid_delta_plan(args, task, profile, inception_weights):
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
    from bench.running.grid import check_inception

    check_inception(task, profile, inception_weights)
    return paper, ns[0], ns[-1]
