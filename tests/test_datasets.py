"""bench.datasets: readers for the real on-disk formats (fixtures written here, a few images per
class), the resolver's search order, and the decoded-array cache.

Designed cache behaviour under test: a source found once is decoded and cached; later calls with the
same unchanged source load the cache; when no source can be found at all, a single cached decode for
the data set is loaded (so a run goes on after its source was moved), several are an error unless a
variant is asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError
from bench.datasets import (
    CLASS_NAMES,
    iter_tar_images,
    read_cifar10_batches,
    read_fashion_mnist_idx,
    read_image_folder,
    read_stl10_binary,
    resize_images,
    resolve_dataset,
)
from bench.datasets import readers as R
from bench.datasets import resolve as RS

JPEG75 = Path("/work/shared/data/cifar10-jpeg75.tar.gz")
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No test sees the developer's $BENCH_DATA or the machine's well-known data."""
    monkeypatch.delenv("BENCH_DATA", raising=False)
    monkeypatch.setattr(RS, "WELL_KNOWN", {k: () for k in CLASS_NAMES})

    def no_download(name, root):
        raise AssertionError("tests never download")

    monkeypatch.setattr(RS, "_download", no_download)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _tar(src: Path, dest: Path, arcname: str | None = None, members: list[Path] | None = None) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        if members is None:
            tf.add(src, arcname=arcname or src.name)
        else:  # explicit member order (parents are implied by the names)
            for m in members:
                tf.add(m, arcname=str(Path(arcname or src.name) / m.relative_to(src)), recursive=False)
    return dest


# ------------------------------------------------------------------------------------------ CIFAR-10

def write_cifar(root: Path, n: int = 3, *, bytes_keys=False, protocol=2, seed=0) -> dict:
    """``root/cifar-10-batches-py/`` with 5 train batches and a test batch of ``n`` images each."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = _rng(seed)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        batch = {"batch_label": f"{name} of 6", "labels": y, "data": x.reshape(n, 3072),
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        if bytes_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        xs.append(x)
        ys.append(np.array(y))
    return {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]), "test_x": xs[5], "test_y": ys[5],
            "dir": d}


def _assert_arrays(s, exp):
    for k in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(s, k), exp[k], err_msg=k)
    assert s.train_x.dtype == np.uint8 and s.test_x.dtype == np.uint8
    assert s.train_y.dtype == np.int64 and s.test_y.dtype == np.int64


def test_cifar_batches_folder_and_tar_read_alike(tmp_path):
    exp = write_cifar(tmp_path)
    s = read_cifar10_batches(exp["dir"])
    _assert_arrays(s, exp)
    assert s.train_x.shape == (15, 3, 32, 32) and s.test_x.shape == (3, 3, 32, 32)
    # R,G,B planes: the first 1024 bytes of a row are the red plane
    raw = exp["train_x"][0].reshape(3072)
    np.testing.assert_array_equal(s.train_x[0, 0].reshape(-1), raw[:1024])
    assert s.variant == "cifar10-batches-unverified"
    assert s.details["md5_verified"] is False and "test_batch" in s.details["md5_mismatch"]
    assert len(s.sha256) == 64

    tgz = _tar(exp["dir"], tmp_path / "cifar-10-python.tar.gz")
    st = read_cifar10_batches(tgz)
    _assert_arrays(st, exp)
    assert st.sha256 == s.sha256 and st.variant == s.variant and st.source == str(tgz)


@pytest.mark.parametrize("protocol,bytes_keys", [(2, False), (2, True), (4, False), (5, True)])
def test_cifar_pickle_protocols_and_key_types(tmp_path, protocol, bytes_keys):
    exp = write_cifar(tmp_path, n=2, protocol=protocol, bytes_keys=bytes_keys)
    _assert_arrays(read_cifar10_batches(exp["dir"]), exp)


def test_cifar_official_when_all_md5s_match(tmp_path, monkeypatch):
    exp = write_cifar(tmp_path, n=2)
    md5s = {n: hashlib.md5((exp["dir"] / n).read_bytes()).hexdigest() for n in R.CIFAR10_MD5}
    monkeypatch.setattr(R, "CIFAR10_MD5", md5s)
    s = read_cifar10_batches(exp["dir"])
    assert s.variant == "cifar10-official" and s.details["md5_verified"] is True
    assert "md5_mismatch" not in s.details


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "code", "cifar100", "missing"])
def test_cifar_bad_batches_are_bench_errors_naming_the_file(tmp_path, damage):
    exp = write_cifar(tmp_path, n=2)
    p = exp["dir"] / "data_batch_3"
    if damage == "garbage":
        p.write_bytes(b"not a pickle at all")
    elif damage == "truncated":
        p.write_bytes(p.read_bytes()[:500])
    elif damage == "code":
        p.write_bytes(pickle.dumps({"data": _Evil(), "labels": [0]}))
    elif damage == "cifar100":
        p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}))
    else:
        p.unlink()
    with pytest.raises(BenchError, match="data_batch_3") as e:
        read_cifar10_batches(exp["dir"])
    assert str(exp["dir"]) in str(e.value)


def test_cifar_truncated_archive_is_a_bench_error(tmp_path):
    exp = write_cifar(tmp_path, n=2)
    tgz = _tar(exp["dir"], tmp_path / "cifar-10-python.tar.gz")
    tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    with pytest.raises(BenchError, match="cifar-10-python.tar.gz"):
        read_cifar10_batches(tgz)


# -------------------------------------------------------------------------------------------- STL-10

def write_stl(root: Path, n_train=3, n_test=2, seed=1) -> dict:
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    rng = _rng(seed)
    out = {"dir": d}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        y = rng.integers(1, 11, n).astype(np.uint8)
        # column-major per image: for each channel, column by column
        (d / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (d / f"{split}_y.bin").write_bytes(y.tobytes())
        out[f"{split}_x"], out[f"{split}_y"] = x, y.astype(np.int64) - 1
    return out


def test_stl10_binary_reads_column_major_images_the_right_way_up(tmp_path):
    exp = write_stl(tmp_path)
    s = read_stl10_binary(exp["dir"])
    _assert_arrays(s, exp)
    assert s.train_x.shape == (3, 3, 96, 96) and s.variant == "stl10-binary-unverified"
    assert s.train_y.min() >= 0 and s.train_y.max() <= 9

    # independent of the writer above: byte k of an image is channel k // 9216, column (k % 9216) // 96,
    # row k % 96. Put a mark at row 2, column 70 of channel 1 and a top row in channel 0.
    img = bytearray(3 * 96 * 96)
    img[1 * 9216 + 70 * 96 + 2] = 250
    for col in range(96):
        img[0 * 9216 + col * 96 + 0] = 99
    d = tmp_path / "one" / "stl10_binary"
    d.mkdir(parents=True)
    for split in ("train", "test"):
        (d / f"{split}_X.bin").write_bytes(bytes(img))
        (d / f"{split}_y.bin").write_bytes(bytes([10]))
    s1 = read_stl10_binary(d)
    x = s1.train_x[0]
    assert x[1, 2, 70] == 250 and x[1].sum() == 250
    assert (x[0, 0, :] == 99).all() and x[0, 1:, :].sum() == 0
    assert s1.train_y.tolist() == [9]


def test_stl10_tar_reads_like_the_folder_and_unlabeled_is_not_needed(tmp_path):
    exp = write_stl(tmp_path)
    (exp["dir"] / "class_names.txt").write_text("\n".join(CLASS_NAMES["stl10"]))
    tgz = _tar(exp["dir"], tmp_path / "stl10_binary.tar.gz")
    s = read_stl10_binary(tgz)
    _assert_arrays(s, exp)
    assert s.sha256 == read_stl10_binary(exp["dir"]).sha256


def test_stl10_official_when_md5s_match(tmp_path, monkeypatch):
    exp = write_stl(tmp_path)
    monkeypatch.setattr(R, "STL10_MD5", {n: hashlib.md5((exp["dir"] / n).read_bytes()).hexdigest()
                                         for n in R.STL10_MD5})
    assert read_stl10_binary(exp["dir"]).variant == "stl10-official"


@pytest.mark.parametrize("damage,file", [("truncate", "train_X.bin"), ("count", "test_y.bin"),
                                         ("label0", "train_y.bin"), ("missing", "test_X.bin")])
def test_stl10_damaged_files_are_bench_errors_naming_the_file(tmp_path, damage, file):
    exp = write_stl(tmp_path)
    p = exp["dir"] / file
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:-7])
    elif damage == "count":
        p.write_bytes(p.read_bytes() + b"\x01")
    elif damage == "label0":
        p.write_bytes(b"\x00" + p.read_bytes()[1:])
    else:
        p.unlink()
    with pytest.raises(BenchError, match=file):
        read_stl10_binary(exp["dir"])


def test_resize_images_matches_pillow_bilinear():
    rng = _rng(2)
    x = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    y = resize_images(x, 64)
    assert y.shape == (3, 3, 64, 64) and y.dtype == np.uint8
    ref = np.asarray(Image.fromarray(x[1].transpose(1, 2, 0)).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(y[1], ref.transpose(2, 0, 1))
    flat = np.full((1, 1, 28, 28), 77, np.uint8)
    assert (resize_images(flat, (14, 20), "nearest") == 77).all()
    assert resize_images(flat, (14, 20)).shape == (1, 1, 14, 20)
    with pytest.raises(BenchError, match="resample"):
        resize_images(flat, 8, "fancy")


# ------------------------------------------------------------------------------------- Fashion-MNIST

def write_idx(path: Path, arr: np.ndarray, magic: int | None = None) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    blob = struct.pack(">i", 0x0800 | arr.ndim if magic is None else magic)
    blob += struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def write_fmnist(d: Path, *, gz=True, seed=3) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    sfx = ".gz" if gz else ""
    out = {"dir": d}
    for split, prefix, n in (("train", "train", 5), ("test", "t10k", 4)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[0, 0, :] = 255  # a bright top row
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(d / f"{prefix}-images-idx3-ubyte{sfx}", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte{sfx}", y)
        out[f"{split}_x"], out[f"{split}_y"] = x[:, None], y.astype(np.int64)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_plain_and_gzipped(tmp_path, gz):
    exp = write_fmnist(tmp_path / "fm", gz=gz)
    s = read_fashion_mnist_idx(exp["dir"])
    _assert_arrays(s, exp)
    assert s.train_x.shape == (5, 1, 28, 28) and (s.train_x[0, 0, 0] == 255).all()
    assert s.variant == "fashion-mnist-idx-unverified" and s.details["md5_verified"] is False


@pytest.mark.parametrize("damage", ["magic", "truncated", "rows"])
def test_fashion_mnist_bad_idx_is_a_bench_error_naming_the_file(tmp_path, damage):
    exp = write_fmnist(tmp_path / "fm", gz=False)
    p = exp["dir"] / "t10k-images-idx3-ubyte"
    if damage == "magic":
        write_idx(p, exp["test_x"][:, 0], magic=2049)
        msg = "bad magic"
    elif damage == "truncated":
        p.write_bytes(p.read_bytes()[:-10])
        msg = "truncated"
    else:
        write_idx(p, np.zeros((4, 32, 32), np.uint8))
        msg = "28x28"
    with pytest.raises(BenchError, match=msg) as e:
        read_fashion_mnist_idx(exp["dir"])
    assert str(p) in str(e.value)


def test_fashion_mnist_torchvision_layout_through_the_resolver(tmp_path):
    exp = write_fmnist(tmp_path / "root" / "FashionMNIST" / "raw")
    s = resolve_dataset("fashion-mnist", tmp_path / "root", tmp_path / "cache")
    _assert_arrays(s, exp)
    assert s.source == str(exp["dir"])


@pytest.mark.skipif(not (DEBIAN_FMNIST / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(RS, "WELL_KNOWN", {**RS.WELL_KNOWN, "fashion-mnist": (DEBIAN_FMNIST,)})
    s = resolve_dataset("fashion-mnist", None, tmp_path / "cache")
    assert s.variant == "fashion-mnist-official" and s.details["md5_verified"] is True
    assert s.train_x.shape == (60000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(s.train_y).tolist() == [6000] * 10 and np.bincount(s.test_y).tolist() == [1000] * 10
    assert s.train_y[:3].tolist() == [9, 0, 0]  # upstream's first labels: ankle boot, T-shirt, T-shirt


# -------------------------------------------------------------------------------------- image folders

def write_tree(root: Path, name: str, *, per_class=2, folders=None, seed=4, ext=".png", size=None) -> dict:
    """``root/{train,test}/<folder>/NNNN.png``; expected arrays in (label, file name) order."""
    folders = folders or list(CLASS_NAMES[name])
    rng = _rng(seed)
    s = size or R.IMAGE_SIZE[name]
    c = R.CHANNELS[name]
    out = {"dir": root}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, folder in enumerate(folders):
            d = root / split / folder
            d.mkdir(parents=True)
            for i in range(per_class):
                x = rng.integers(0, 256, (c, s, s), dtype=np.uint8)
                img = Image.fromarray(x[0] if c == 1 else x.transpose(1, 2, 0))
                img.save(d / f"{i:04d}{ext}")
                xs.append(x)
                ys.append(label)
        out[f"{split}_x"], out[f"{split}_y"] = np.stack(xs), np.array(ys)
    return out


def test_image_folder_png_tree_rgb(tmp_path):
    folders = [c.capitalize() for c in CLASS_NAMES["cifar10"]]  # case does not matter
    exp = write_tree(tmp_path / "tree", "cifar10", folders=folders)
    (tmp_path / "tree" / "train" / "Cat" / "notes.txt").write_text("not an image")
    s = read_image_folder(exp["dir"], "cifar10")
    _assert_arrays(s, exp)
    assert s.train_x.shape == (20, 3, 32, 32) and s.variant == "cifar10-imagefolder"
    assert s.details["pillow"] and s.details["counts"] == {"train": 20, "test": 20}


def test_image_folder_fashion_mnist_is_grayscale_and_labelled_by_class_name(tmp_path):
    # folders named like torchvision's ImageFolder exports: sorted order is NOT the label order
    folders = ["T-shirt_top", "trouser", "Pullover", "dress", "coat", "sandal", "Shirt", "sneaker", "bag",
               "Ankle boot"]
    exp = write_tree(tmp_path / "fm", "fashion-mnist", folders=folders)
    s = read_image_folder(exp["dir"], "fashion-mnist")
    _assert_arrays(s, exp)
    assert s.train_x.shape == (20, 1, 28, 28) and s.variant == "fashion-mnist-imagefolder"
    assert s.train_y[-1] == 9  # Ankle boot, although "Ankle boot" sorts first


def test_image_folder_tree_in_a_tar_matches_the_folder(tmp_path):
    exp = write_tree(tmp_path / "mytree", "cifar10", ext=".jpg")
    tgz = _tar(exp["dir"], tmp_path / "mytree.tar.gz")
    a, b = read_image_folder(exp["dir"], "cifar10"), read_image_folder(tgz, "cifar10")
    assert a.sha256 == b.sha256 and b.variant == "cifar10-imagefolder"


def test_image_folder_wrong_classes_are_named(tmp_path):
    folders = list(CLASS_NAMES["cifar10"])
    folders[3] = "kitten"
    write_tree(tmp_path / "t", "cifar10", per_class=1, folders=folders)
    with pytest.raises(BenchError, match="kitten") as e:
        read_image_folder(tmp_path / "t", "cifar10")
    assert "'cat'" in str(e.value) and str(tmp_path / "t" / "train") in str(e.value)
    # the same in an archive
    tgz = _tar(tmp_path / "t", tmp_path / "t.tar.gz")
    with pytest.raises(BenchError, match="kitten"):
        read_image_folder(tgz, "cifar10")


def test_image_folder_missing_split_or_class_or_empty_class(tmp_path):
    exp = write_tree(tmp_path / "t", "stl10", per_class=1)
    for p in (exp["dir"] / "test" / "monkey").iterdir():
        p.unlink()
    with pytest.raises(BenchError, match="monkey"):
        read_image_folder(exp["dir"], "stl10")
    (exp["dir"] / "test" / "monkey").rmdir()
    with pytest.raises(BenchError, match="no folder for \\['monkey'\\]"):
        read_image_folder(exp["dir"], "stl10")
    import shutil

    shutil.rmtree(exp["dir"] / "test")
    with pytest.raises(BenchError, match="no test/ folder"):
        read_image_folder(exp["dir"], "stl10")


def test_image_folder_wrong_size_names_the_file(tmp_path):
    exp = write_tree(tmp_path / "t", "cifar10", per_class=1)
    bad = exp["dir"] / "test" / "frog" / "0000.png"
    Image.new("RGB", (30, 32)).save(bad)
    with pytest.raises(BenchError, match="30x32, expected 32x32") as e:
        read_image_folder(exp["dir"], "cifar10")
    assert str(bad) in str(e.value)


def write_jpeg75_tar(tmp_path: Path, per_class=2) -> tuple[Path, dict]:
    """A tiny copy of the JPEG archive's layout, stored in a scrambled member order."""
    src = tmp_path / "src" / "cifar10-jpeg75"
    exp = write_tree(src, "cifar10", per_class=per_class, ext=".jpg")
    files = sorted(src.rglob("*.jpg"), reverse=True)  # train/truck/0001.jpg first
    tgz = _tar(src, tmp_path / "cifar10-jpeg75.tar.gz", members=files)
    return tgz, exp


def test_jpeg75_style_archive(tmp_path):
    tgz, exp = write_jpeg75_tar(tmp_path)
    s = read_image_folder(tgz, "cifar10")
    assert s.variant == "cifar10-jpeg75" and s.source == str(tgz)
    assert s.details["pillow"] and "libjpeg" in s.details and "shifted" in s.details["note"]
    np.testing.assert_array_equal(s.train_y, exp["train_y"])  # ordered by (class, file name)
    # lossy, but close: JPEG q75 of noise is far from exact, so compare with Pillow's own decode
    ref = np.asarray(Image.open(exp["dir"] / "train" / "bird" / "0001.jpg").convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(s.train_x[2 * 2 + 1], ref)
    items = list(iter_tar_images(tgz, limit=3))
    assert len(items) == 3 and items[0].root == "cifar10-jpeg75"
    assert (items[0].split, items[0].cls, items[0].fname) == ("train", "truck", "0001.jpg")  # archive order


@pytest.mark.skipif(not JPEG75.exists(), reason=f"{JPEG75} is absent")
def test_real_jpeg75_archive_layout():
    """The first 200 images of the shared archive, through the helper the reader uses."""
    items = list(iter_tar_images(JPEG75, limit=200))
    assert len(items) == 200
    assert {it.root for it in items} == {"cifar10-jpeg75"}
    assert {it.split for it in items} <= {"train", "test"}
    assert {it.cls for it in items} <= set(CLASS_NAMES["cifar10"])
    for it in items[:20]:
        assert it.fname.endswith(".jpg")
        with Image.open(io.BytesIO(it.data)) as im:
            assert im.format == "JPEG" and im.size == (32, 32)


@pytest.mark.slow
@pytest.mark.skipif(not JPEG75.exists(), reason=f"{JPEG75} is absent")
def test_real_jpeg75_archive_full_decode(tmp_path):
    """All 60,000 JPEGs (about 8 s on one core), then the cache."""
    s = resolve_dataset("cifar10", JPEG75.parent, tmp_path / "cache")
    assert s.variant == "cifar10-jpeg75" and s.train_x.shape == (50000, 3, 32, 32)
    assert np.bincount(s.train_y).tolist() == [5000] * 10 and np.bincount(s.test_y).tolist() == [1000] * 10
    again = resolve_dataset("cifar10", JPEG75.parent, tmp_path / "cache")
    assert again.source.startswith("cache:") and again.sha256 == s.sha256


# ---------------------------------------------------------------------------------- hashes and cache

def test_sha256_changes_when_one_pixel_changes(tmp_path):
    exp = write_tree(tmp_path / "t", "cifar10", per_class=1)
    cache = tmp_path / "cache"
    a = resolve_dataset("cifar10", exp["dir"], cache)
    p = exp["dir"] / "train" / "dog" / "0000.png"
    x = np.asarray(Image.open(p)).copy()
    x[5, 7, 1] ^= 1
    Image.fromarray(x).save(p)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse-mtime file system would not
    b = resolve_dataset("cifar10", exp["dir"], cache)
    assert b.sha256 != a.sha256 and not b.source.startswith("cache:")
    assert a.sha256 == R.arrays_sha256(a.train_x, a.train_y, a.test_x, a.test_y)
    # labels count too
    assert R.arrays_sha256(a.train_x, a.train_y[::-1], a.test_x, a.test_y) != a.sha256


def test_cache_is_used_on_the_second_call_and_after_the_source_is_gone(tmp_path):
    exp = write_cifar(tmp_path / "data")
    cache = tmp_path / "cache"
    first = resolve_dataset("cifar10", tmp_path / "data", cache)
    assert first.source == str(exp["dir"])
    npz = cache / "data" / f"{first.variant}-{first.sha256[:12]}.npz"
    meta = json.loads(npz.with_suffix(".json").read_text())
    assert meta["variant"] == first.variant and meta["sha256"] == first.sha256 and meta["source"] == first.source
    assert meta["details"]["md5_verified"] is False

    second = resolve_dataset("cifar10", tmp_path / "data", cache)
    assert second.source == f"cache:{npz}" and second.details["decoded_from"] == str(exp["dir"])
    assert second.sha256 == first.sha256 and second.variant == first.variant
    _assert_arrays(second, exp)

    for p in exp["dir"].iterdir():
        p.unlink()
    exp["dir"].rmdir()
    third = resolve_dataset("cifar10", None, cache)
    assert third.source == f"cache:{npz}"
    _assert_arrays(third, exp)
    with pytest.raises(BenchError, match="does not exist"):  # a --data-root that is gone is a mistake
        resolve_dataset("cifar10", tmp_path / "nowhere", cache)


def test_variants_never_collide_in_the_cache(tmp_path):
    cache = tmp_path / "cache"
    exp = write_cifar(tmp_path / "a")
    tree = write_tree(tmp_path / "b" / "cifar10", "cifar10", per_class=1)
    tgz, _ = write_jpeg75_tar(tmp_path / "c", per_class=1)
    sets = [resolve_dataset("cifar10", exp["dir"], cache), resolve_dataset("cifar10", tree["dir"], cache),
            resolve_dataset("cifar10", tgz, cache)]
    assert [s.variant for s in sets] == ["cifar10-batches-unverified", "cifar10-imagefolder", "cifar10-jpeg75"]
    names = sorted(p.name for p in (cache / "data").glob("*.npz"))
    assert names == sorted(f"{s.variant}-{s.sha256[:12]}.npz" for s in sets)
    # the same source again comes back from its own entry, never another variant's
    for s, src in zip(sets, (exp["dir"], tree["dir"], tgz)):
        again = resolve_dataset("cifar10", src, cache)
        assert again.source.startswith("cache:") and again.variant == s.variant and again.sha256 == s.sha256

    # no source: several cached decodes are never chosen between silently
    with pytest.raises(BenchError, match="several") as e:
        resolve_dataset("cifar10", None, cache)
    assert all(n in str(e.value) for n in names)
    assert resolve_dataset("cifar10", None, cache, variant="cifar10-jpeg75").sha256 == sets[2].sha256
    with pytest.raises(BenchError, match="cifar10-official"):
        resolve_dataset("cifar10", tgz, cache, variant="cifar10-official")


def test_cache_is_reverified_on_load(tmp_path):
    exp = write_stl(tmp_path / "data")
    cache = tmp_path / "cache"
    s = resolve_dataset("stl10", exp["dir"], cache)
    npz = cache / "data" / f"{s.variant}-{s.sha256[:12]}.npz"
    tampered = dict(s.arrays)
    tampered["train_x"] = tampered["train_x"].copy()
    tampered["train_x"][0, 0, 0, 0] ^= 1
    with open(npz, "wb") as f:
        np.savez(f, **tampered)
    # the source is there: the bad entry is ignored and rewritten
    again = resolve_dataset("stl10", exp["dir"], cache)
    assert again.source == str(exp["dir"]) and again.sha256 == s.sha256
    assert resolve_dataset("stl10", exp["dir"], cache).source == f"cache:{npz}"
    # no source: a bad entry is reported, never returned
    npz.write_bytes(b"garbage")
    with pytest.raises(BenchError, match="unreadable") as e:
        resolve_dataset("stl10", None, cache)
    assert str(npz) in str(e.value)


def test_generic_data_root_and_bench_data_serve_several_data_sets(tmp_path, monkeypatch):
    root = tmp_path / "all"
    exp_c = write_cifar(root)
    exp_s = write_stl(root)
    exp_f = write_fmnist(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "env"))
    cache = tmp_path / "cache"
    _assert_arrays(resolve_dataset("cifar10", root, cache), exp_c)
    _assert_arrays(resolve_dataset("stl10", root, cache), exp_s)
    f = resolve_dataset("fashion-mnist", root, cache)  # not under --data-root: found through $BENCH_DATA
    _assert_arrays(f, exp_f)
    assert f.source == str(exp_f["dir"])
    # a single file as --data-root
    _assert_arrays(resolve_dataset("fashion-mnist", exp_f["dir"] / "t10k-images-idx3-ubyte.gz", cache), exp_f)


def test_broken_data_under_data_root_is_an_error_not_a_fallback(tmp_path):
    exp = write_cifar(tmp_path / "data", n=2)
    (exp["dir"] / "test_batch").unlink()
    with pytest.raises(BenchError, match="test_batch"):
        resolve_dataset("cifar10", tmp_path / "data", tmp_path / "cache")


@pytest.mark.parametrize("name", ["cifar10", "stl10", "fashion-mnist"])
def test_missing_data_message_lists_every_place(tmp_path, monkeypatch, name):
    empty, env, known = tmp_path / "empty", tmp_path / "env", tmp_path / "known"
    for d in (empty, env, known):
        d.mkdir()
    monkeypatch.setenv("BENCH_DATA", str(env))
    monkeypatch.setattr(RS, "WELL_KNOWN", {**RS.WELL_KNOWN, name: (known,)})
    cache = tmp_path / "cache"
    with pytest.raises(BenchError) as e:
        resolve_dataset(name, empty, cache)
    msg = str(e.value)
    for p in (empty, env, known, cache / "data", cache / "downloads"):
        assert str(p) in msg
    assert "--data-root" in msg and "\n" not in msg
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in msg
    if name == "cifar10":
        assert "cifar-10-python.tar.gz" in msg and "train/<class>/*.png" in msg


def test_unknown_name(tmp_path):
    with pytest.raises(BenchError, match="unknown data set 'mnist'"):
        resolve_dataset("mnist", None, tmp_path)


def test_download_only_when_allowed(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        write_fmnist(root / "FashionMNIST" / "raw")

    monkeypatch.setattr(RS, "_download", fake_download)
    with pytest.raises(BenchError, match="allow a torchvision download"):
        resolve_dataset("fashion-mnist", None, tmp_path / "cache")
    assert calls == []
    s = resolve_dataset("fashion-mnist", None, tmp_path / "cache", allow_download=True)
    assert calls == [("fashion-mnist", tmp_path / "cache" / "downloads")]
    assert s.source == str(tmp_path / "cache" / "downloads" / "FashionMNIST" / "raw")
    # the download is found again later without downloading
    assert resolve_dataset("fashion-mnist", None, tmp_path / "cache").sha256 == s.sha256
    assert len(calls) == 1
