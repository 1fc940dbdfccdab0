"""``bench sweep``: a grid of cells as Ray tasks, on a local Ray instance or a cluster."""

from __future__ import annotations

from bench.cli import catalog
from bench.cli.args import grid_arguments, grid_from_args, options_from_args

HELP = "run a grid of cells as Ray tasks (local Ray, or a cluster with --address)"


def add_parser(sub) -> None:
    sw = sub.add_parser("sweep", help=HELP, description=HELP)
    grid_arguments(sw)
    sw.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of every cell (default: cpu)")
    sw.add_argument("--address", default=None,
                    help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray instance)")
    sw.add_argument("--gpus-per-cell", type=float, default=None,
                    help="GPUs reserved per cell (default: 1 with --device cuda, else 0)")
    sw.add_argument("--cpus-per-cell", type=int, default=1,
                    help="CPUs reserved per cell, also its PyTorch thread count (default: 1)")
    sw.set_defaults(command=command)


def command(args) -> int:
    options, grid = options_from_args(args), grid_from_args(args)
    catalog.quick_check(grid, options)  # a mistake in a name or number answers before torch or Ray is imported
    from bench.running.sweep import SweepSettings, run_sweep  # torch, diffusers, Ray: only once a command runs

    settings = SweepSettings(args.address, args.cpus_per_cell, args.gpus_per_cell, args.quiet)
    return run_sweep(options, grid, settings)
