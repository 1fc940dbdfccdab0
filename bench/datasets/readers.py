"""Offline readers for the on-disk formats of CIFAR-10, STL-10, Fashion-MNIST and image-folder trees.

Every reader returns an :class:`ImageSet` of uint8 NCHW images and int64 labels, with the variant it
read (official files verified by md5, an unverified copy, an image-folder tree, the JPEG copy) so that
results on different variants are never put side by side. Archives are read in place with
:mod:`tarfile`; nothing is extracted to disk. Every user-side problem (a missing file, a corrupt
pickle, a truncated ``.bin``, wrong class folders, a wrong image size) is a :class:`BenchError`
naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError, features
from tqdm.auto import tqdm

from bench.core.errors import BenchError

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
IMAGE_SIZE = {"cifar10": 32, "stl10": 96, "fashion-mnist": 28}
CHANNELS = {"cifar10": 3, "stl10": 3, "fashion-mnist": 1}

CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
STL10_MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
# md5 of the *decompressed* IDX files (the same for upstream's .gz, torchvision's raw/ and Debian's
# recompressed dataset-fashion-mnist package, whose .gz files differ byte-wise from upstream's)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
JPEG75_NAME = "cifar10-jpeg75"
_STL_IMAGE_BYTES = 3 * 96 * 96
_CHUNK = 1 << 20


@dataclass
class ImageSet:
    """A train/test split as uint8 NCHW images and int64 labels, with where it came from."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    variant: str
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {"train_x": self.train_x, "train_y": self.train_y, "test_x": self.test_x, "test_y": self.test_y}


def arrays_sha256(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> str:
    """sha256 over the four arrays' names, dtypes, shapes and bytes, in a fixed order (hex)."""
    h = hashlib.sha256()
    for key, a in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
        a = np.ascontiguousarray(a)
        h.update(f"{key}:{a.dtype.str}:{tuple(a.shape)}\n".encode())
        h.update(a.data)
    return h.hexdigest()


def make_image_set(train_x, train_y, test_x, test_y, *, source: str, variant: str, details: dict) -> ImageSet:
    arrs = [np.ascontiguousarray(train_x, dtype=np.uint8), np.ascontiguousarray(train_y, dtype=np.int64),
            np.ascontiguousarray(test_x, dtype=np.uint8), np.ascontiguousarray(test_y, dtype=np.int64)]
    return ImageSet(*arrs, source=source, variant=variant, sha256=arrays_sha256(*arrs), details=dict(details))


def is_tar(path: Path) -> bool:
    return Path(path).name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def archive_stem(path: Path) -> str:
    name = Path(path).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BenchError(f"cannot open archive {str(path)!r}: {exc}") from None


def _tar_error(path: Path, exc: BaseException) -> BenchError:
    return BenchError(f"archive {str(path)!r} is corrupt or truncated ({type(exc).__name__}: {exc})")


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _read_hashed(f: IO[bytes], size: int | None = None) -> tuple[bytes | bytearray, str]:
    """All of ``f``, read in chunks while computing its md5 (so 200+ MB files are hashed in one pass,
    into one buffer of the expected ``size`` when it is known)."""
    md5 = hashlib.md5()
    if size is not None:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:got + _CHUNK])
            if not n:
                break
            md5.update(view[got:got + n])
            got += n
        view.release()
        return (buf if got == size else buf[:got]), md5.hexdigest()
    parts = []
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        md5.update(chunk)
        parts.append(chunk)
    return b"".join(parts), md5.hexdigest()


def _read_file_hashed(path: Path) -> tuple[bytes | bytearray, str]:
    try:
        with open(path, "rb") as f:
            return _read_hashed(f, path.stat().st_size)
    except OSError as exc:
        raise BenchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _read_tar_members(path: Path, wanted: tuple[str, ...]) -> dict[str, tuple[bytes | bytearray, str, str]]:
    """The members of archive ``path`` whose base names are in ``wanted`` (first of each), streamed in
    archive order and stopping once all are found: ``{base: (bytes, md5, member name)}``."""
    out: dict[str, tuple[bytes | bytearray, str, str]] = {}
    with _open_tar(path) as tf:
        try:
            for m in tf:
                base = m.name.rstrip("/").rsplit("/", 1)[-1]
                if not m.isfile() or base not in wanted or base in out:
                    continue
                f = tf.extractfile(m)
                data, md5 = _read_hashed(f, m.size)
                if len(data) != m.size:
                    raise BenchError(f"archive {str(path)!r} is truncated inside {m.name!r}")
                out[base] = (data, md5, m.name)
                if len(out) == len(wanted):
                    break
        except _TAR_ERRORS as exc:
            raise _tar_error(path, exc) from None
    missing = [w for w in wanted if w not in out]
    if missing:
        raise BenchError(f"archive {str(path)!r} has no member named {', '.join(missing)}")
    return out


# --------------------------------------------------------------------------------------------- CIFAR-10

class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of numpy arrays, lists, strings) and refuses anything else, so a
    file passed as --data-root cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _key(d: dict, key: str) -> Any:
    if key in d:
        return d[key]
    if key.encode() in d:
        return d[key.encode()]
    raise KeyError(key)


def _parse_cifar_batch(data: bytes | bytearray, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # a corrupt pickle raises almost anything (EOFError, ValueError, ...)
        raise BenchError(f"{where} is not a readable CIFAR-10 batch pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise BenchError(f"{where} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    try:
        x, y = _key(obj, "data"), _key(obj, "labels")
    except KeyError as exc:
        raise BenchError(f"{where} has no {exc.args[0]!r} entry; is it a CIFAR-10 (not CIFAR-100) batch?") from None
    try:
        x = np.asarray(x)
        y = np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"{where}: cannot read its data/labels as arrays ({exc})") from None
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or not np.issubdtype(x.dtype, np.integer):
        raise BenchError(f"{where}: 'data' is {x.dtype}{list(x.shape)}, expected uint8 rows of 3072 bytes")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise BenchError(f"{where}: 'data' holds values outside 0..255")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise BenchError(f"{where}: {len(x)} images but 'labels' is {y.dtype}{list(y.shape)}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise BenchError(f"{where}: labels outside 0..9")
    return x.astype(np.uint8).reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_named(path: Path, names: tuple[str, ...], what: str) -> dict[str, tuple[bytes, str, str]]:
    """``{name: (bytes, md5, where)}`` of the named files, from a ``.tar(.gz)`` read in place or a folder."""
    if path.is_file():
        got = _read_tar_members(path, names)
        return {k: (v[0], v[1], f"{path}:{v[2]}") for k, v in got.items()}
    blobs = {}
    for n in names:
        p = path / n
        if not p.is_file():
            raise BenchError(f"{what} {str(p)!r} is missing (need {', '.join(names)})")
        data, md5 = _read_file_hashed(p)
        blobs[n] = (data, md5, str(p))
    return blobs


def read_cifar10_batches(path: Path) -> ImageSet:
    """CIFAR-10 "python version": ``cifar-10-python.tar.gz`` (read in place) or the extracted
    ``cifar-10-batches-py/`` folder. Train is data_batch_1..5 in order; test is test_batch. Official
    files (all six md5s match) give variant ``cifar10-official``, anything else
    ``cifar10-batches-unverified``."""
    path = Path(path)
    names = tuple(CIFAR10_MD5)
    blobs = _read_named(path, names, "CIFAR-10 batch")
    parts = {n: _parse_cifar_batch(blobs[n][0], blobs[n][2]) for n in names}
    mismatched = [n for n in names if blobs[n][1] != CIFAR10_MD5[n]]
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    details = {"format": "cifar10-python-batches", "md5_verified": not mismatched}
    if mismatched:
        details["md5_mismatch"] = mismatched
    return make_image_set(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                          *parts["test_batch"], source=str(path),
                          variant="cifar10-official" if not mismatched else "cifar10-batches-unverified",
                          details=details)


# ----------------------------------------------------------------------------------------------- STL-10

def _parse_stl_x(data: bytes | bytearray, where: str) -> np.ndarray:
    if len(data) % _STL_IMAGE_BYTES:
        raise BenchError(f"{where} has {len(data)} bytes, not a whole number of 3x96x96 images "
                         "(truncated or not an STL-10 *_X.bin)")
    # each image is 3 planes of 96x96 stored column-major: reshape then swap the two spatial axes
    x = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3, 96, 96)
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2))


def _parse_stl_y(data: bytes | bytearray, where: str, n: int) -> np.ndarray:
    y = np.frombuffer(data, dtype=np.uint8)
    if len(y) != n:
        raise BenchError(f"{where} has {len(y)} labels but its images file has {n} images")
    if n and (y.min() < 1 or y.max() > 10):
        raise BenchError(f"{where} holds labels outside 1..10")
    return y.astype(np.int64) - 1


def read_stl10_binary(path: Path) -> ImageSet:
    """STL-10 binary: ``stl10_binary/`` with train_X.bin, train_y.bin, test_X.bin, test_y.bin (the
    unlabeled split is not needed), or ``stl10_binary.tar.gz`` read in place. Images stay 96x96 here
    (see :func:`resize_images`). md5s all match → ``stl10-official``, else ``stl10-binary-unverified``."""
    path = Path(path)
    names = tuple(STL10_MD5)
    blobs = _read_named(path, names, "STL-10 file")
    split = {}
    for s in ("train", "test"):
        x = _parse_stl_x(blobs[f"{s}_X.bin"][0], blobs[f"{s}_X.bin"][2])
        y = _parse_stl_y(blobs[f"{s}_y.bin"][0], blobs[f"{s}_y.bin"][2], len(x))
        split[s] = (x, y)
    mismatched = [n for n in names if blobs[n][1] != STL10_MD5[n]]
    details = {"format": "stl10-binary", "md5_verified": not mismatched, "image_size": 96}
    if mismatched:
        details["md5_mismatch"] = mismatched
    return make_image_set(*split["train"], *split["test"], source=str(path),
                          variant="stl10-official" if not mismatched else "stl10-binary-unverified",
                          details=details)


_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def resize_images(x: np.ndarray, size: int | tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Resize uint8 NCHW images one by one with Pillow (``size`` is an int for square or (height,
    width)); returns uint8 NCHW. Pillow's bilinear filter widens its support when shrinking, as the
    reference pipelines (torchvision's PIL Resize) do."""
    if resample not in _RESAMPLE:
        raise BenchError(f"unknown resample {resample!r}; choose from {', '.join(_RESAMPLE)}")
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.dtype != np.uint8:
        raise BenchError(f"resize_images needs uint8 (N,1|3,H,W) images, got {x.dtype}{list(x.shape)}")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    out = np.empty((len(x), x.shape[1], h, w), dtype=np.uint8)
    flt = Image.Resampling(_RESAMPLE[resample])
    for i, img in enumerate(x):
        pil = Image.fromarray(img[0] if x.shape[1] == 1 else img.transpose(1, 2, 0))
        arr = np.asarray(pil.resize((w, h), flt))
        out[i] = arr[None] if x.shape[1] == 1 else arr.transpose(2, 0, 1)
    return out


# ---------------------------------------------------------------------------------------- Fashion-MNIST

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_idx_file(folder: Path, base: str) -> Path | None:
    """``folder/base`` or ``folder/base.gz`` (the plain file first), or None."""
    for p in (folder / base, folder / f"{base}.gz"):
        if p.is_file():
            return p
    return None


def read_idx(path: Path, *, expect_ndim: int | None = None) -> tuple[np.ndarray, str]:
    """An IDX file of unsigned bytes (optionally .gz): big-endian int32 magic (0x0803 for 3-d,
    0x0801 for 1-d), the dimension sizes, then the data. Returns the array and the md5 of the
    decompressed file."""
    path = Path(path)
    where = str(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data, md5 = _read_hashed(f)
        else:
            data, md5 = _read_file_hashed(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise BenchError(f"cannot read IDX file {where!r}: {exc}") from None
    if len(data) < 4:
        raise BenchError(f"IDX file {where!r} is too short ({len(data)} bytes)")
    magic = struct.unpack(">i", data[:4])[0]
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim < 1 or (expect_ndim is not None and ndim != expect_ndim):
        want = {1: 2049, 3: 2051}.get(expect_ndim or 0, "2049 or 2051")
        raise BenchError(f"IDX file {where!r} has bad magic number {magic} (expected {want}); "
                         "is it an unsigned-byte IDX file, decompressed correctly?")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise BenchError(f"IDX file {where!r} is truncated inside its header")
    dims = struct.unpack(f">{ndim}i", data[4:head])
    n = int(np.prod(dims, dtype=np.int64))
    if len(data) - head != n:
        raise BenchError(f"IDX file {where!r} has {len(data) - head} data bytes but its header "
                         f"{'x'.join(map(str, dims))} needs {n} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims), md5


def read_fashion_mnist_idx(folder: Path) -> ImageSet:
    """Fashion-MNIST IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``folder``
    (upstream, torchvision's ``FashionMNIST/raw/`` or Debian's ``/usr/share/datasets/fashion-mnist/``).
    Official content (md5 of the decompressed files) → ``fashion-mnist-official``."""
    folder = Path(folder)
    files = {}
    for base in IDX_FILES:
        p = find_idx_file(folder, base)
        if p is None:
            raise BenchError(f"Fashion-MNIST file {str(folder / base)!r}[.gz] is missing (need {', '.join(IDX_FILES)})")
        files[base] = p
    split, md5s = {}, {}
    for s, prefix in (("train", "train"), ("test", "t10k")):
        ximg, md5s[f"{prefix}-images-idx3-ubyte"] = read_idx(files[f"{prefix}-images-idx3-ubyte"], expect_ndim=3)
        ylab, md5s[f"{prefix}-labels-idx1-ubyte"] = read_idx(files[f"{prefix}-labels-idx1-ubyte"], expect_ndim=1)
        if ximg.shape[1:] != (28, 28):
            raise BenchError(f"{str(files[f'{prefix}-images-idx3-ubyte'])!r} holds "
                             f"{ximg.shape[1]}x{ximg.shape[2]} images, expected 28x28")
        if len(ylab) != len(ximg):
            raise BenchError(f"{str(files[f'{prefix}-labels-idx1-ubyte'])!r} has {len(ylab)} labels for "
                             f"{len(ximg)} images in {str(files[f'{prefix}-images-idx3-ubyte'])!r}")
        if len(ylab) and ylab.max() > 9:
            raise BenchError(f"{str(files[f'{prefix}-labels-idx1-ubyte'])!r} holds labels outside 0..9")
        split[s] = (ximg[:, None], ylab)
    mismatched = [b for b in IDX_FILES if md5s[b] != FASHION_MNIST_MD5[b]]
    details = {"format": "idx", "md5_verified": not mismatched, "files": {b: str(p) for b, p in files.items()}}
    if mismatched:
        details["md5_mismatch"] = mismatched
    return make_image_set(*split["train"], *split["test"], source=str(folder),
                          variant="fashion-mnist-official" if not mismatched else "fashion-mnist-idx-unverified",
                          details=details)


# ------------------------------------------------------------------------------------ image-folder trees

def norm_class(name: str) -> str:
    """Class names compared case-insensitively, ignoring ``-``, ``_``, spaces and ``/``."""
    return "".join(ch for ch in name.lower() if ch not in "-_ /")


def class_index(name: str) -> dict[str, int]:
    """Normalised folder name → label, for the known dataset ``name``; "T-shirt/top" (which cannot be a
    folder name) also answers to "T-shirt_top", "tshirt-top" and "T-shirt"."""
    out = {}
    for i, c in enumerate(CLASS_NAMES[name]):
        out[norm_class(c)] = i
        if "/" in c:
            out[norm_class(c.split("/")[0])] = i
    return out


class TarImage(NamedTuple):
    split: str       # "train" or "test"
    cls: str         # class folder name as in the archive
    fname: str       # file name
    member: str      # full member name
    root: str        # the folder above train/ and test/ ("" at the top of the archive)
    data: bytes


def _is_image_name(fname: str) -> bool:
    return fname.lower().endswith(IMAGE_EXTS) and not fname.startswith(".")


def iter_tar_images(path: Path, limit: int | None = None) -> Iterator[TarImage]:
    """Stream the images of an image-folder tree ``[root/]{train,test}/<class>/<file>`` held in a tar
    archive, in archive order, without extracting; stops after ``limit`` images. Other members are
    skipped; images under two different roots are an error."""
    path = Path(path)
    root = None
    n = 0
    with _open_tar(path) as tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                parts = m.name.strip("/").split("/")
                if len(parts) < 3 or parts[-3] not in ("train", "test") or not _is_image_name(parts[-1]):
                    continue
                this_root = "/".join(p for p in parts[:-3] if p not in ("", "."))
                if root is None:
                    root = this_root
                elif this_root != root:
                    raise BenchError(f"archive {str(path)!r} holds more than one image tree "
                                     f"({root or '.'}/ and {this_root or '.'}/); keep one")
                yield TarImage(parts[-3], parts[-2], parts[-1], m.name, root, tf.extractfile(m).read())
                n += 1
                if limit is not None and n >= limit:
                    return
        except _TAR_ERRORS as exc:
            raise _tar_error(path, exc) from None


def tar_kind(path: Path, peek: int = 64) -> str | None:
    """What an archive holds, judged from its first ``peek`` members: "cifar10-batches",
    "stl10-binary", "idx", "imagefolder" or None."""
    with _open_tar(path) as tf:
        try:
            for i, m in enumerate(tf):
                if i >= peek:
                    break
                parts = m.name.strip("/").split("/")
                base = parts[-1]
                if base in CIFAR10_MD5 or base == "batches.meta":
                    return "cifar10-batches"
                if base in STL10_MD5 or base in ("unlabeled_X.bin", "class_names.txt", "fold_indices.txt"):
                    return "stl10-binary"
                if base.removesuffix(".gz") in IDX_FILES:
                    return "idx"
                if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test") and _is_image_name(base):
                    return "imagefolder"
        except _TAR_ERRORS as exc:
            raise _tar_error(path, exc) from None
    return None


def _pil_details() -> dict[str, Any]:
    out: dict[str, Any] = {"pillow": PIL.__version__}
    # JPEG decoders differ in their IDCTs: record which one decoded the pixels
    for key, feature in (("libjpeg", "jpg"), ("libjpeg_turbo", "libjpeg_turbo"), ("zlib", "zlib")):
        try:
            out[key] = features.version(feature)
        except Exception:  # a Pillow built without it, or one that does not know the feature name
            out[key] = None
    return out


def _decode(data: bytes | Path, where: str, mode: str, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if im.size != (size, size):
                raise BenchError(f"image {where!r} is {im.size[0]}x{im.size[1]}, expected {size}x{size}")
            arr = np.asarray(im.convert(mode))
    except BenchError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BenchError(f"cannot decode image {where!r}: {exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _check_classes(found: set[str], name: str, where: str) -> dict[str, int]:
    """Map the class folders found to labels; one BenchError naming every mismatch otherwise."""
    index = class_index(name)
    unexpected = sorted(c for c in found if norm_class(c) not in index)
    labels: dict[str, int] = {}
    by_label: dict[int, list[str]] = {}
    for c in sorted(found):
        if c not in unexpected:
            labels[c] = index[norm_class(c)]
            by_label.setdefault(labels[c], []).append(c)
    missing = [CLASS_NAMES[name][i] for i in range(len(CLASS_NAMES[name])) if i not in by_label]
    dup = [f"{' and '.join(v)}" for v in by_label.values() if len(v) > 1]
    if unexpected or missing or dup:
        bits = []
        if unexpected:
            bits.append(f"unexpected folders {unexpected}")
        if missing:
            bits.append(f"no folder for {missing}")
        if dup:
            bits.append(f"one class in several folders ({'; '.join(dup)})")
        raise BenchError(f"class folders in {where!r} do not match the {name} classes "
                         f"{list(CLASS_NAMES[name])}: {', '.join(bits)}")
    return labels


def _progress(total: int | None, desc: str):
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def read_image_folder(path: Path, name: str) -> ImageSet:
    """An image-folder tree ``{train,test}/<class>/*.png|jpg|jpeg``, as a folder or inside a tar
    archive. Class folders must be the classes of dataset ``name`` (case, ``-``, ``_`` and spaces
    ignored); labels follow the dataset's class order (for CIFAR-10 and STL-10 that is also the
    folders' sorted order). Images are ordered by (label, file name) within each split, RGB (grayscale
    for Fashion-MNIST), and must be the dataset's native size. The copy named ``cifar10-jpeg75``
    gives variant ``cifar10-jpeg75``, anything else ``<name>-imagefolder``."""
    path = Path(path)
    size, mode = IMAGE_SIZE[name], ("L" if CHANNELS[name] == 1 else "RGB")
    index = class_index(name)
    decoded: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {"train": {}, "test": {}}
    if path.is_file():
        root = ""
        jpeg75 = name == "cifar10" and archive_stem(path) == JPEG75_NAME
        total = 60000 if jpeg75 else None
        with _progress(total, f"decoding {path.name}") as bar:
            for item in iter_tar_images(path):
                root = item.root
                if norm_class(item.cls) not in index:
                    raise BenchError(f"class folder {item.cls!r} in {str(path)!r} ({item.member}) is not one of "
                                     f"the {name} classes {list(CLASS_NAMES[name])}")
                arr = _decode(item.data, f"{path}:{item.member}", mode, size)
                decoded[item.split].setdefault(item.cls, []).append((item.fname, arr))
                bar.update()
        jpeg75 = jpeg75 or (name == "cifar10" and root.rsplit("/", 1)[-1] == JPEG75_NAME)
        where_of = {s: f"{path}:{root + '/' if root else ''}{s}" for s in ("train", "test")}
        for s in ("train", "test"):
            if not decoded[s]:
                raise BenchError(f"archive {str(path)!r} has no images under {s}/<class>/ "
                                 f"(expected {'/'.join(('<root>', s, '<class>', '*.png'))})")
    else:
        jpeg75 = name == "cifar10" and path.name == JPEG75_NAME
        where_of = {s: str(path / s) for s in ("train", "test")}
        files: dict[str, dict[str, list[Path]]] = {}
        for s in ("train", "test"):
            d = path / s
            if not d.is_dir():
                raise BenchError(f"image-folder tree {str(path)!r} has no {s}/ folder")
            classes = {c.name: c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")}
            _check_classes(set(classes), name, str(d))
            files[s] = {c: sorted(p for p in cdir.iterdir() if p.is_file() and _is_image_name(p.name))
                        for c, cdir in classes.items()}
        total = sum(len(v) for fs in files.values() for v in fs.values())
        with _progress(total, f"decoding {path.name}") as bar:
            for s, by_class in files.items():
                for c, paths in by_class.items():
                    decoded[s][c] = []
                    for p in paths:
                        decoded[s][c].append((p.name, _decode(p, str(p), mode, size)))
                        bar.update()
    out = {}
    counts = {}
    for s in ("train", "test"):
        labels = _check_classes(set(decoded[s]), name, where_of[s])
        for c, items in decoded[s].items():
            if not items:
                raise BenchError(f"class folder {where_of[s] + '/' + c!r} holds no .png/.jpg/.jpeg images")
        order = sorted(((labels[c], fname, arr) for c, items in decoded[s].items() for fname, arr in items),
                       key=lambda t: (t[0], t[1]))
        out[s] = (np.stack([t[2] for t in order]), np.array([t[0] for t in order], dtype=np.int64))
        counts[s] = len(order)
    variant = "cifar10-jpeg75" if jpeg75 else f"{name}-imagefolder"
    details = {"format": "imagefolder", "md5_verified": False, "counts": counts, **_pil_details()}
    if jpeg75:
        details["note"] = ("lossy JPEG (quality 75) copy of CIFAR-10, a shifted distribution: never place "
                           "its numbers next to cifar10-official ones")
    return make_image_set(*out["train"], *out["test"], source=str(path), variant=variant, details=details)
