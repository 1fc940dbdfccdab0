"""The real-image tasks end to end on their smoke profiles, reading fixture files in the real formats.

Every registered method runs on each task's smoke profile (shrunk U-Net, 10-20 images per class): the
driver's contract holds (counted steps equal the budget, values finite, NFE as declared) and every row
records the data variant and hash. Forgetting itself is checked on digits-class (test_conformance.py):
a smoke-sized model of CIFAR-10 cannot be calibrated. Also: users' checkpoints (``--base-model``),
missing data and wrong checkpoints as one clear error, and bf16 autocast recorded in the row.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from _fixtures import write_cifar_batches, write_fashion_idx, write_stl_binary

from bench.cli import main
from bench.engine.driver import CellSpec, Driver
from bench.engine.options import Options
from bench.method import METHODS

WRITERS = {"fashion-mnist-class": write_fashion_idx, "cifar10-class": write_cifar_batches,
           "stl10-class": write_stl_binary}
VARIANTS = {"fashion-mnist-class": "fashion-mnist-idx-unverified", "cifar10-class": "cifar10-batches-unverified",
            "stl10-class": "stl10-binary-unverified"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    os.environ.pop("BENCH_DATA", None)
    root = tmp_path_factory.mktemp("data")
    data = {t: w(root / t) for t, w in WRITERS.items()}
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("runs")
    drivers = {t: Driver(Options(out=out, cache=cache, progress=False, data_root=data[t]), log=lambda m: None)
               for t in WRITERS}
    return {"data": data, "cache": cache, "out": out, "drivers": drivers}


# the project's methods (other test modules register throw-away methods while they are collected)
PROJECT_METHODS = [m for m in METHODS.names() if METHODS.get(m).__module__.startswith("methods.")
                   and "class" in METHODS.get(m).task_kinds]
# every method on Fashion-MNIST (the reference U-Net at its smallest); on CIFAR-10 and STL-10, whose extra code
# is the readers and the image sizes, one method of each kind: a reference row, a masked multi-step method, the
# Fisher/replay family and a one-step generator (keeps CI well under its time limit)
PER_TASK = {"fashion-mnist-class": PROJECT_METHODS,
            "cifar10-class": [m for m in ("original", "salun", "sa", "sfd") if m in PROJECT_METHODS],
            "stl10-class": [m for m in ("original", "salun", "sa", "sfd") if m in PROJECT_METHODS]}
CELLS = [(t, m) for t in WRITERS for m in PER_TASK[t]]


@pytest.mark.parametrize("task,method", CELLS, ids=[f"{t}-{m}" for t, m in CELLS])
def test_every_method_runs_on_each_real_task_smoke_profile(env, task, method):
    cls = METHODS.get(method)
    row = env["drivers"][task].run(CellSpec(task, method, forget_class=0, seed=0, profile="smoke", iters=2))
    assert row["grad_steps"] == row["expected_steps"] == row["iters"] * cls.steps_per_iter
    for key in ("ua", "retain_acc", "fid", "unlearn_s", "nfe", "peak_mem_unlearn_mb"):
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), key
    assert row["nfe"] == row["nfe_declared"] and row["output"] == cls.output
    assert row["dataset_variant"] == VARIANTS[task] and len(row["data_sha256"]) == 64
    assert row["unet_arch"] == "reference-unet" and 0.0 <= row["classifier_test_acc"] <= 1.0


def test_split_sizes_and_image_ranges(env):
    drv = env["drivers"]["stl10-class"]
    task = drv.task("stl10-class")
    a = drv.assets(task, "smoke")
    # 10 classes x (10 train + 3 test) pooled, re-split 12:1, then the smoke profile keeps 10 per class
    assert a.splits.train_x.shape[1:] == (3, 64, 64) and len(a.splits.train_x) + len(a.splits.test_x) <= 130
    assert -1.0 <= float(a.splits.train_x.min()) and float(a.splits.train_x.max()) <= 1.0
    fm = env["drivers"]["fashion-mnist-class"]
    s = fm.assets(fm.task("fashion-mnist-class"), "smoke").splits
    assert s.train_x.shape[1:] == (1, 28, 28) and torch.bincount(s.train_y).tolist() == [20] * 10


def test_user_checkpoint_in_the_reference_format_reproduces_the_harness_base(env, tmp_path):
    """A base model exported in the reference training code's format ([model_state, optimizer_state,
    step, ema_shadow], ``module.`` prefixes) and loaded back with --base-model draws the same samples
    as the harness's own base model: the Original rows agree exactly, under different cell ids."""
    from bench.models.checkpoints import save_reference_checkpoint

    task_name = "fashion-mnist-class"
    drv = env["drivers"][task_name]
    harness_row = drv.run(CellSpec(task_name, "original", 0, 0, "smoke"))
    a = drv.assets(drv.task(task_name), "smoke")
    ckpt = tmp_path / "ckpt.pth"
    save_reference_checkpoint(a.base("raw"), ckpt, ema_state=a.base("ema").state_dict(), step=40)
    user = Driver(Options(out=env["out"], cache=env["cache"], progress=False, data_root=env["data"][task_name],
                          base_model=ckpt, base_weights="raw"), log=lambda m: None)
    row = user.run(CellSpec(task_name, "original", 0, 0, "smoke"))
    assert row["cell"] != harness_row["cell"] and row["base_source"] == str(ckpt)
    for key in ("ua", "retain_acc", "fid"):
        assert row[key] == harness_row[key], key


def test_bf16_autocast_is_recorded_and_gives_its_own_cell(env):
    task_name = "fashion-mnist-class"
    fp32 = env["drivers"][task_name].run(CellSpec(task_name, "ga", 0, 0, "smoke", iters=2))
    drv = Driver(Options(out=env["out"], cache=env["cache"], progress=False, data_root=env["data"][task_name],
                         precision="bf16"), log=lambda m: None)
    row = drv.run(CellSpec(task_name, "ga", 0, 0, "smoke", iters=2))
    assert row["compute_precision"] == "bf16" and fp32["compute_precision"] == "fp32" and row["cell"] != fp32["cell"]
    assert math.isfinite(row["fid"]) and row["grad_steps"] == 2


def test_missing_data_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BENCH_DATA", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["run", "--methods", "ga", "--task", "cifar10-class", "--profile", "smoke", "--data-root",
               str(empty), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("bench: error:")
    assert str(empty) in err[0] and "--data-root" in err[0]


def test_a_checkpoint_of_another_architecture_is_one_clear_error(env, tmp_path, capsys):
    """A Fashion-MNIST checkpoint given to the CIFAR-10 task names a differing key and both shapes."""
    from bench.models.checkpoints import save_reference_checkpoint

    fm = env["drivers"]["fashion-mnist-class"]
    a = fm.assets(fm.task("fashion-mnist-class"), "smoke")
    ckpt = tmp_path / "fm.pth"
    save_reference_checkpoint(a.base("raw"), ckpt, ema_state=a.base("ema").state_dict(), step=1)
    rc = main(["run", "--methods", "original", "--task", "cifar10-class", "--profile", "smoke", "--data-root",
               str(env["data"]["cifar10-class"]), "--cache", str(env["cache"]), "--out", str(tmp_path / "o"),
               "--base-model", str(ckpt), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "conv_in.weight" in err[0]
    assert not (tmp_path / "o" / "cifar10-class" / "runs").exists()  # checked before any work


def test_paper_compat_images_stretch_each_image_and_swap_channels():
    from metrics.fid import paper_compat_images

    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    x[0, 0], x[0, 1], x[0, 2] = 10, 20, 30  # R, G, B planes of image 0
    x[1] = 77  # a flat image stays finite (all zeros after the stretch)
    y = paper_compat_images(x)
    # stretched to 0, 0.5, 1 -> floor(255 v + 0.5) = 0, 128, 255, then read as B, G, R
    assert y[0, :, 0, 0].tolist() == [255, 128, 0]
    assert y[1].max().item() == 0 and y.dtype == torch.uint8


def test_inception_fid_uses_cached_reference_statistics(env):
    """With Inception weights on the machine, the table's FID is Inception FID and its reference
    statistics are computed once: a second cell reuses them."""
    import dataclasses

    from bench.core.errors import BenchError
    from metrics.inception import find_inception

    try:
        find_inception()
    except BenchError as exc:
        pytest.skip(f"no Inception weights here: {exc}")
    task_name = "fashion-mnist-class"
    base = env["drivers"][task_name].task(task_name)
    task = dataclasses.replace(base)
    task.profiles = {"smoke": dataclasses.replace(base.profiles["smoke"], fid_features="inception-v3",
                                                  fid_ref_per_class=3, n_per_class=2)}
    drv = Driver(Options(out=env["out"], cache=env["cache"], progress=False, data_root=env["data"][task_name]),
                 log=lambda m: None, tasks=[task])
    rows = [drv.run(CellSpec(task_name, "original", 0, s, "smoke")) for s in (0, 1)]
    assert all(r["fid_features"] == "inception-v3" and math.isfinite(r["fid"]) for r in rows)
    assert rows[0]["fid_n_ref"] == 27 and rows[0]["fid"] != rows[1]["fid"]
    folders = list((env["cache"] / task_name / "refstats").glob("refstats-*"))
    inception = [f for f in folders if "inception" in (f / "manifest.json").read_text()]
    assert len(inception) == 1
