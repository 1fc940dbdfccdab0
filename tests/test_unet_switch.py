"""``--unet diffusers``: a real task's reference U-Net config built as a diffusers ``UNet2DModel``.

The translated network is checked on the built model itself (where attention actually runs, the widths,
the norm groups, the timestep features); the switch end to end on Fashion-MNIST fixture files: the row
says which architecture it used, and the base model is cached under its own key and never taken for
the reference one; a checkpoint of the other architecture, and the switch on tasks it does not apply
to, are one error line with exit code 2.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from _fixtures import write_fashion_idx

from bench.cli import build_parser, main
from bench.core.hashing import content_hash
from bench.engine.driver import CellSpec, Driver, resolve_task
from bench.engine.options import Options
from bench.models.factory import build_unet, diffusers_config
from bench.models.refunet import RefUNet, timestep_embedding
from bench.tasks import get_task
from bench.tasks.fashion_mnist import SMOKE_UNET
from bench.tasks.fashion_mnist import UNET as FASHION_UNET

TASK = "fashion-mnist-class"
CIFAR_SHAPED = {"ch": 16, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.1,
                "resolution": 32, "in_channels": 3, "out_channels": 3, "norm_groups": 8}
TWO_ATTN_LEVELS = {"ch": 8, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [32, 8],
                   "dropout": 0.0, "resolution": 64, "in_channels": 3, "out_channels": 3, "norm_groups": 4}


def _attention_sizes(net, x: torch.Tensor) -> dict[str, list[int]]:
    """The spatial size of every attention call in the down and up paths during one forward pass."""
    seen: dict[str, list[int]] = {"down": [], "up": []}
    hooks = []
    for path, blocks in (("down", net.unet.down_blocks), ("up", net.unet.up_blocks)):
        for m in blocks.modules():
            if type(m).__name__ == "Attention":
                hooks.append(m.register_forward_hook(
                    lambda mod, args, out, path=path: seen[path].append(int(args[0].shape[-1]))))
    with torch.no_grad():
        out = net(x, torch.tensor([3] * len(x)), torch.arange(len(x)))
    for h in hooks:
        h.remove()
    assert out.shape == x.shape
    return seen


@pytest.mark.parametrize("ref", [FASHION_UNET, CIFAR_SHAPED, TWO_ATTN_LEVELS], ids=["fashion", "cifar", "two-attn"])
def test_translation_builds_the_same_shape_with_attention_where_configured(ref):
    net = build_unet("diffusers-unet", diffusers_config(ref), 10).eval()
    res, nrb = ref["resolution"], ref["num_res_blocks"]
    levels = [res // 2**k for k in range(len(ref["ch_mult"]))]
    attn_levels = [r for r in levels if r in ref["attn_resolutions"]]
    assert attn_levels  # every case has attention somewhere in the down/up paths
    x = torch.randn(2, ref["in_channels"], res, res)
    seen = _attention_sizes(net, x)
    # attention after each resnet of an attention level (one more resnet per level on the way up), nowhere else
    assert sorted(seen["down"]) == sorted(r for r in attn_levels for _ in range(nrb))
    assert sorted(seen["up"]) == sorted(r for r in attn_levels for _ in range(nrb + 1))
    assert net.unet.mid_block.attentions[0].heads == 1  # one head as wide as the block, as in the reference
    for k, block in enumerate(net.unet.down_blocks):
        assert len(block.resnets) == nrb and block.resnets[-1].out_channels == ref["ch"] * ref["ch_mult"][k]
        assert (type(block).__name__ == "AttnDownBlock2D") == (levels[k] in ref["attn_resolutions"])
    for k, block in enumerate(net.unet.up_blocks):
        assert len(block.resnets) == nrb + 1 and block.resnets[-1].out_channels == ref["ch"] * ref["ch_mult"][-1 - k]
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {ref["norm_groups"]}
    drops = {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    assert drops == ({ref["dropout"]} if ref["dropout"] else set())
    t = torch.tensor([0, 17, 999])  # the reference's [sin, cos] timestep features, up to float32 rounding
    assert torch.allclose(net.unet.time_proj(t), timestep_embedding(t, ref["ch"]), atol=1e-4)


def test_switched_task_translates_every_config_and_leaves_the_registered_task_alone():
    task = resolve_task(TASK, Options(unet="diffusers"))
    assert task.arch == "diffusers-unet" and task.unet_switch == "diffusers"
    assert task.unet_config == diffusers_config(FASHION_UNET)
    assert task.profiles["smoke"].unet_config == diffusers_config(SMOKE_UNET)
    assert task.profiles["fast"].unet_config is None  # falls back to the translated task config
    own = get_task(TASK)
    assert own.arch == "reference-unet" and own.profiles["smoke"].unet_config == SMOKE_UNET
    assert resolve_task(TASK, Options(unet="reference")).unet_switch is None  # the task's own: nothing changes


@pytest.fixture(scope="module")
def diffusers_run(tmp_path_factory):
    """``bench run --unet diffusers`` once on Fashion-MNIST fixture files."""
    os.environ.pop("BENCH_DATA", None)
    root = tmp_path_factory.mktemp("unet-switch")
    data = write_fashion_idx(root / "data")
    cache, out = root / "cache", root / "out"
    rc = main(["run", "--methods", "original", "--task", TASK, "--profile", "smoke", "--unet", "diffusers",
               "--data-root", str(data), "--cache", str(cache), "--out", str(out), "--quiet"])
    assert rc == 0
    rows = list((out / TASK / "runs").glob("*/row.json"))
    assert len(rows) == 1
    return {"data": data, "cache": cache, "out": out, "row": json.loads(rows[0].read_text())}


def test_diffusers_run_records_its_architecture_and_caches_its_own_base_model(diffusers_run):
    row, cache = diffusers_run["row"], diffusers_run["cache"]
    assert row["unet_arch"] == "diffusers-unet"
    config = json.loads((row_dir(diffusers_run) / "config.json").read_text())
    assert config["identity"]["unet_arch"] == "diffusers-unet"
    bases = list((cache / TASK).glob("base-*"))
    assert len(bases) == 1
    saved = json.loads((bases[0] / "raw" / "config.json").read_text())
    assert saved["_class_name"] == "UNet2DModel" and saved["block_out_channels"] == [16, 32]
    # the reference run of the same cell: another base-model folder and another cell id
    def driver(unet=None):
        return Driver(Options(out=diffusers_run["out"], cache=cache, progress=False, data_root=diffusers_run["data"],
                              unet=unet), log=lambda m: None)

    ref = driver()
    ref_assets = ref.assets(ref.task(TASK), "smoke")
    assert bases[0].name != f"base-{content_hash(ref_assets.base_key())}"
    spec = CellSpec(TASK, "original", 0, 0, "smoke")
    assert ref.plan(spec).name != row["cell"]
    same = driver("reference")
    assert same.plan(spec).name == ref.plan(spec).name  # --unet reference on a reference task is the default


def row_dir(run: dict):
    return run["out"] / TASK / "runs" / run["row"]["cell"]


def _run_err(capsys, run: dict, out, *extra: str) -> tuple[int, list[str]]:
    rc = main(["run", "--methods", "original", "--task", TASK, "--profile", "smoke", "--data-root", str(run["data"]),
               "--cache", str(run["cache"]), "--out", str(out), "--quiet", *extra])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_a_base_model_of_the_other_architecture_is_one_error_line(diffusers_run, tmp_path, capsys):
    from bench.models.checkpoints import load_base_model

    harness_diffusers = next((diffusers_run["cache"] / TASK).glob("base-*"))  # raw/ and ema/ UNet2DModel folders
    rc, err = _run_err(capsys, diffusers_run, tmp_path / "a", "--base-model", str(harness_diffusers))
    assert rc == 2 and len(err) == 1 and err[0].startswith("bench: error:")
    assert "reference-unet architecture" in err[0] and "--unet diffusers" in err[0]
    ref_folder = tmp_path / "ref"
    RefUNet(SMOKE_UNET, 10).save(ref_folder)
    rc, err = _run_err(capsys, diffusers_run, tmp_path / "b", "--unet", "diffusers", "--base-model", str(ref_folder))
    assert rc == 2 and len(err) == 1 and err[0].startswith("bench: error:")
    assert "diffusers-unet architecture" in err[0] and "--unet reference" in err[0]
    assert not (tmp_path / "a" / TASK / "runs").exists() and not (tmp_path / "b" / TASK / "runs").exists()
    task = resolve_task(TASK, Options(unet="diffusers"))  # the same folder is accepted as the selected architecture
    net = load_base_model(harness_diffusers, {"arch": task.arch, "config": task.profiles["smoke"].unet_config}, 10)
    assert type(net).__name__ == "CondUNet"


@pytest.mark.parametrize("argv,needle", [
    (["run", "--methods", "original", "--task", "sd-nudity", "--unet", "diffusers"], "concept task"),
    (["pretrain", "--task", "sd-digits", "--unet", "diffusers"], "concept task"),
    (["run", "--methods", "original", "--task", "digits-class", "--unet", "reference"], "no reference-unet"),
])
def test_unet_where_it_does_not_apply_is_one_error_line(argv, needle, tmp_path, capsys):
    rc = main([*argv, "--cache", str(tmp_path / "cache"), *(["--out", str(tmp_path / "out")] if argv[0] == "run"
                                                              else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("bench: error: --unet") and needle in err[0]


def test_every_command_takes_the_option():
    for argv in (["run", "--methods", "ga", "--task", TASK], ["sweep", "--methods", "ga", "--task", TASK],
                 ["pretrain", "--task", TASK]):
        assert build_parser().parse_args([*argv, "--unet", "diffusers"]).unet == "diffusers"
        assert build_parser().parse_args(argv).unet is None
