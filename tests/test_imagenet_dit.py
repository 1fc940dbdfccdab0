"""``imagenet-dit`` on a miniature of the user's setup, built here from configs: a DiTPipeline folder (a one-block
DiT with 3 classes and learned sigma, a 4-level VAE, DiT's linear scheduler), an ImageNet-style class-folder tree
of generated JPEGs of several sizes, and a tiny timm classifier saved as timm saves models. Checked: the reader
lists names and decodes only what is asked, the VAE latents (shape, the config's scaling factor), class methods
end to end to a row with UA, retained accuracy and FID, and every user mistake as one BenchError line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_cli import bench

from bench.assets.latent_classes import LatentAssets
from bench.core.errors import BenchError
from bench.datasets.lazy_folder import LazyImageFolder, center_crop
from bench.engine.driver import CellSpec, Driver
from bench.engine.options import Grid, Options
from bench.models.latent import check_pipeline, load_pipeline
from bench.running.grid import plan_grid
from bench.tasks import TASKS
from bench.tasks.imagenet_dit import IMAGENET_DIT

PX, CLASSES, SCALING = 64, ("n01440764", "n01443537", "n01484850"), 0.25
TINY_DIT = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1, num_attention_heads=2,
                attention_head_dim=8)
SIZES = ((96, 80), (70, 140), (64, 64), (300, 200))  # (width, height): wide, tall, exact, halved twice

pytestmark = pytest.mark.usefixtures("one_thread")


def write_tree(root: Path, classes, per_class: int, seed: int = 0) -> Path:
    """``root/<class>/<i>.JPEG``: each class a colour, with noise, images of several sizes."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = SIZES[i % len(SIZES)]
            base = np.array([(80 * k + 40) % 256, 200 - 60 * k, 60 + 70 * k], dtype=np.float64)
            img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{c}_{i:04d}.JPEG", quality=90)
    return root


def write_pipeline(folder: Path, classes: int = len(CLASSES)) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(**TINY_DIT, num_embeds_ada_norm=classes)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        sample_size=PX, scaling_factor=SCALING)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False)
    DiTPipeline(transformer=dit, vae=vae, scheduler=sched).save_pretrained(folder)
    return folder


def write_classifier(folder: Path, classes: int = len(CLASSES)) -> Path:
    """A timm ResNet of width 8, saved as timm's Hub format: config.json (architecture, model_args,
    pretrained_cfg) and model.safetensors."""
    import timm

    torch.manual_seed(0)
    args = {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem_width": 8, "num_classes": classes}
    net = timm.create_model("resnet18", pretrained=False, **args)
    folder.mkdir(parents=True)
    cfg = {"architecture": "resnet18", "num_classes": classes, "model_args": args,
           "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 0.875, "interpolation": "bilinear",
                              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet-dit")
    data = root / "imagenet"
    write_tree(data / "train", CLASSES, 4)
    write_tree(data / "val", CLASSES, 2, seed=1)
    task = dataclasses.replace(IMAGENET_DIT, pixel_size=PX, image_size=8, unet_config=TINY_DIT)
    return SimpleNamespace(root=root, data=data, pipe=write_pipeline(root / "dit-pipeline"),
                           clf=write_classifier(root / "timm-classifier"), task=task)


def options(world, **changes) -> Options:
    base = dict(out=world.root / "runs", cache=world.root / "cache", progress=False, data_root=world.data,
                base_model=world.pipe, classifier=world.clf)
    return Options(**{**base, **changes})


# --- the reader -----------------------------------------------------------------------------------------------
def test_reader_lists_names_and_decodes_only_what_is_asked(world):
    train = LazyImageFolder.scan(world.data / "train", PX, "--data-root")
    assert train.classes == CLASSES and len(train) == 12 and train.decoded == 0
    assert train.label_of(np.array([0, 3, 4, 11])).tolist() == [0, 0, 1, 2]
    assert train.indices([2], per_class=3).tolist() == [8, 9, 10]
    stream = train.batches(train.indices([1, 2]), batch=3, seed=0)
    x, y = next(stream)
    assert x.shape == (3, 3, PX, PX) and x.dtype == torch.uint8 and set(y.tolist()) <= {1, 2}
    assert train.decoded <= 6  # the batch handed out and the one decoded ahead, never the 8 images of the classes
    x2, _ = next(stream)
    assert train.decoded <= 9 and not torch.equal(x, x2)
    first = train.batches(train.indices([0]), batch=2, seed=5, first=True)
    assert torch.equal(next(first)[0], next(first)[0])  # the reference quirk: always the first images


def test_center_crop_follows_the_short_side():
    wide = Image.fromarray(np.tile(np.arange(300, dtype=np.uint8)[None, :, None], (200, 1, 3)))
    out = center_crop(wide, 64)  # halved once (300x200 -> 150x100), resized to 96x64, central 64 columns
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert abs(int(out[0, 0, 32]) - 150) <= 3  # the middle of the ramp stays in the middle
    tall = center_crop(Image.new("RGB", (64, 130), (10, 20, 30)), 64)
    assert tall.shape == (3, 64, 64) and tall[:, 5, 5].tolist() == [10, 20, 30]


# --- the pipeline's latents -----------------------------------------------------------------------------------
def test_latents_have_the_dit_shape_and_the_vae_config_scaling(world):
    layout = check_pipeline(world.pipe)
    assert (layout.latent_channels, layout.latent_size, layout.vae_scale) == (4, 8, 8)
    assert layout.scaling_factor == SCALING and layout.num_classes == 3
    net, codec = load_pipeline(layout)
    x = torch.rand(2, 3, PX, PX) * 2 - 1
    z = codec.encode(x, torch.Generator().manual_seed(3))
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():  # scaling_factor * a posterior sample, from the same draw
        raw = codec.vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(3))
        assert torch.allclose(z, raw * SCALING, atol=1e-6)
        back = codec.decode(z)
        assert back.shape == (2, 3, PX, PX)
        assert torch.allclose(back, codec.vae.decode(z / SCALING).sample, atol=1e-6)
        eps = net.eval()(z, torch.tensor([10.0, 900.0]), torch.tensor([0, 3]))  # label 3: the null class
    assert eps.shape == z.shape  # the learned-sigma half is dropped
    assert IMAGENET_DIT.channels * IMAGENET_DIT.image_size ** 2 == 4 * 32 * 32  # DiT-XL/2-256's latent


# --- end to end ---------------------------------------------------------------------------------------------
def test_smoke_cells_write_rows_with_ua_retained_accuracy_and_fid(world):
    driver = Driver(options(world), log=lambda m: None, tasks=[world.task])
    task = driver.task("imagenet-dit")
    assert task.num_classes == 3 and task.class_names == CLASSES  # the class count follows the folders
    rows = {m: driver.run(CellSpec("imagenet-dit", m, 0, 0, "smoke")) for m in ("original", "rl", "retrain")}
    for m in ("original", "rl"):
        row = rows[m]
        assert row["status"] != "skipped"
        for k in ("ua", "retain_acc", "fid"):
            assert isinstance(row[k], float) and np.isfinite(row[k]), (m, k)
        assert row["fid_features"] == "task-classifier" and row["fid_n_ref"] == 4  # 2 validation images x 2 classes
        assert row["decoded_from"] == "latents 4x8x8" and row["base_source"] == str(world.pipe)
        assert row["data_sha256"] == task.data_info["data_sha256"]
        assert 0.0 <= row["classifier_test_acc"] <= 1.0
    assert rows["rl"]["grad_steps"] == 2 and rows["rl"]["nfe"] == 4  # 2 DDIM steps, guided
    assert rows["retrain"]["status"] == "skipped" and "never trains" in rows["retrain"]["skip_reason"]
    # the rl run encoded its batches with the VAE: counted beside the DiT's forwards
    config = json.loads((driver.cell_folder(driver.plan(CellSpec("imagenet-dit", "rl", 0, 0, "smoke")))
                         / "config.json").read_text())
    assert config["counts"]["forward_images_by_net"].get("vae_encoder", 0) >= 8


def test_fid_reference_is_the_validation_images_of_the_remaining_classes(world):
    driver = Driver(options(world), log=lambda m: None, tasks=[world.task])
    a = driver.assets(driver.task("imagenet-dit"), "smoke")
    ref = a.real_remain(1)
    assert ref.shape == (4, 3, PX, PX) and ref.dtype == torch.uint8
    val = driver.task("imagenet-dit").val
    assert torch.equal(ref, val.load(val.indices([0, 2], 2))[0])
    assert IMAGENET_DIT.profile("fast").fid_features is None and IMAGENET_DIT.fid_features == "inception-v3"


# --- one line for each user mistake ---------------------------------------------------------------------------
def test_no_base_model_says_what_to_pass(world):
    driver = Driver(options(world, base_model=None), log=lambda m: None, tasks=[world.task])
    with pytest.raises(BenchError, match="never trains a base model: pass --base-model DIR"):
        driver.run(CellSpec("imagenet-dit", "original", 0, 0, "smoke"))
    with pytest.raises(BenchError, match="never trains a base model"):  # and before any work, from the CLI's plan
        plan_grid(options(world, base_model=None), Grid(task="imagenet-dit", methods="original", profile="smoke"))
    with pytest.raises(BenchError, match="has only ua, retain_acc and fid"):  # pixel-space probes are refused
        plan_grid(options(world), Grid(task="imagenet-dit", methods="original", profile="smoke", metrics="robustness"))


def test_wrong_pipeline_folders_are_named(world, tmp_path):
    unet = tmp_path / "sd"
    (unet / "unet").mkdir(parents=True)
    with pytest.raises(BenchError, match=r"a U-Net pipeline folder \(unet/\), not a DiT"):
        check_pipeline(unet, "imagenet-dit")
    with pytest.raises(BenchError, match="a bare DiTTransformer2DModel folder without its VAE"):
        check_pipeline(world.pipe / "transformer", "imagenet-dit")
    no_vae = tmp_path / "no-vae"
    shutil.copytree(world.pipe, no_vae, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(BenchError, match=r"no VAE \(vae/config.json is missing\)"):
        check_pipeline(no_vae, "imagenet-dit")
    cosine = tmp_path / "cosine"
    shutil.copytree(world.pipe, cosine)
    cfg_file = cosine / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "beta_schedule": "squaredcos_cap_v2"}))
    with pytest.raises(BenchError, match="squaredcos_cap_v2"):
        check_pipeline(cosine, "imagenet-dit")


def test_data_folder_mistakes(world, tmp_path):
    with pytest.raises(BenchError, match="pass --data-root DIR with ImageNet as class folders"):
        world.task.bind(None)
    with pytest.raises(BenchError, match="no such folder"):
        world.task.bind(tmp_path / "nowhere")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(BenchError, match="has no class sub-folders"):
        world.task.bind(tmp_path / "empty")
    hollow = tmp_path / "hollow"
    write_tree(hollow / "train", CLASSES[:2], 1)
    (hollow / "train" / CLASSES[2]).mkdir()
    with pytest.raises(BenchError, match="holds no .JPEG/.jpg/.png images"):
        world.task.bind(hollow)
    odd = tmp_path / "odd"
    write_tree(odd / "train", CLASSES, 1)
    write_tree(odd / "val", CLASSES[:2], 1)
    with pytest.raises(BenchError, match="train/ has 3 class folders and val/ 2"):
        world.task.bind(odd)


def test_class_count_mismatch_and_classifier_mistakes(world, tmp_path):
    two = tmp_path / "two-classes"
    write_tree(two / "train", CLASSES[:2], 1)
    write_tree(two / "val", CLASSES[:2], 1)
    a = LatentAssets(world.task, world.task.profile("smoke"), torch.device("cpu"), tmp_path / "cache",
                     data_root=two, base_model=world.pipe, classifier_path=world.clf)
    with pytest.raises(BenchError, match="the DiT has 3 classes, the data folder has 2 class folders"):
        a.base()
    with pytest.raises(BenchError, match="the classifier has 3 classes, the data folder has 2 class folders"):
        a.classifier()
    a = LatentAssets(world.task, world.task.profile("smoke"), torch.device("cpu"), tmp_path / "cache",
                     data_root=world.data, base_model=world.pipe, classifier_path=None)
    with pytest.raises(BenchError, match="with your ImageNet classifier: pass --classifier PATH"):
        a.classifier()
    a.classifier_path = tmp_path / "missing"
    with pytest.raises(BenchError, match="no such file or folder"):
        a.classifier()


def test_registered_and_listed():
    assert "imagenet-dit" in TASKS.names()
    t = IMAGENET_DIT
    assert t.num_classes == 1000 and t.arch == "dit" and (t.channels, t.image_size, t.pixel_size) == (4, 32, 256)


def test_pretrain_says_there_is_nothing_to_train(world):
    r = bench("pretrain", "--task", "imagenet-dit", "--data-root", str(world.data), cache=world.root / "cache")
    assert r.returncode == 2 and "nothing to pretrain" in r.stderr and "Traceback" not in r.stderr
