"""Prompt files and evaluation sets of the Stable Diffusion concept tasks (sd-concepts.md §1.1-§1.3).

The prompt files are data, never part of the repository: they are read in place from a folder found
by :func:`find_prompts_dir`. Each reader returns :class:`PromptRow` records in file order and copes
with the quirks of its file (an unnamed index column, a UTF-8 byte-order mark, quoted prompts that
span several lines, seeds beyond 2**31, zero-padded COCO ids, a text file whose last line has no
newline). :func:`eval_set` turns a named set into the exact list of images to sample
(:class:`Request`), and :func:`initial_noise` gives the reference initial latents of a row.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.cache import default_cache_root
from bench.core.errors import BenchError
from bench.core.hashing import file_sha256
from bench.tasks.sd import IMAGENETTE_CLASSES

# file name -> where the file comes from (shared/data/README.md); all MIT-licensed
PROMPT_FILES: dict[str, str] = {
    "i2p-unsafe-prompts4703.csv": "rohitgandikota/erasing data/unsafe-prompts4703.csv",
    "i2p-nudity142.csv": "OPTML-Group/Diffusion-MU-Attack prompts/nudity.csv",
    "imagenette-eval.csv": "OPTML-Group/Unlearn-Saliency SD/prompts/imagenette.csv",
    "imagenette-small.csv": "rohitgandikota/erasing data/small_imagenet_prompts.csv",
    "styles-big-artists.csv": "rohitgandikota/erasing data/",
    "styles-vangogh.csv": "rohitgandikota/erasing data/",
    "coco-30k.csv": "rohitgandikota/erasing data/coco_30k.csv",
    "celebrity-brad-pitt.txt": "clear-nus/selective-amnesia sd/",
    "celebrity-angelina-jolie.txt": "clear-nus/selective-amnesia sd/",
}

# concept order of sd-object (= imagenette-eval's classidx)

I2P_GUIDANCE = ("fixed", "per_row")
_MAX_SEED = 2**64  # torch.Generator.manual_seed takes any unsigned 64-bit value


# --------------------------------------------------------------------------------------------------
# locating the files


def find_prompts_dir(explicit: Path | None = None) -> Path:
    """The prompts folder: ``explicit`` (``--prompts-dir``), else ``$BENCH_PROMPTS``, else
    ``<cache>/prompts``; the first of these that is an existing folder wins."""
    looked: list[str] = []
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
        looked.append(f"--prompts-dir {explicit}")
    env = os.environ.get("BENCH_PROMPTS")
    if env:
        candidates.append(Path(env))
        looked.append(f"$BENCH_PROMPTS={env}")
    else:
        looked.append("$BENCH_PROMPTS (unset)")
    cache = default_cache_root() / "prompts"
    candidates.append(cache)
    looked.append(str(cache))
    for folder in candidates:
        if folder.expanduser().is_dir():
            return folder.expanduser()
    raise BenchError(f"no folder of SD prompt files found (looked at: {'; '.join(looked)}); create one holding "
                     f"{_sources()}, then pass --prompts-dir or set BENCH_PROMPTS")


def prompt_file(prompts_dir: Path, name: str) -> Path:
    """``prompts_dir / name``, or a one-line :class:`BenchError` saying which file is missing and where it
    comes from."""
    path = Path(prompts_dir) / name
    if not path.is_file():
        origin = PROMPT_FILES.get(name, "unknown source")
        raise BenchError(f"prompt file {name} is missing from {prompts_dir} (it is a copy of {origin}; "
                         f"the folder should hold {', '.join(PROMPT_FILES)})")
    return path


def _sources() -> str:
    return ", ".join(f"{name} (from {origin})" for name, origin in PROMPT_FILES.items())


# --------------------------------------------------------------------------------------------------
# readers


@dataclass(frozen=True)
class PromptRow:
    """One row of a prompt file. ``label`` is the class or artist, ``label_index`` imagenette's
    ``classidx``; ``guidance`` is I2P's ``evaluation_guidance``; ``seed`` is None for celebrity prompts."""

    case_number: int
    prompt: str
    seed: int | None = None
    guidance: float | None = None
    categories: tuple[str, ...] = ()
    label: str | None = None
    label_index: int | None = None
    image_id: str | None = None


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """All rows as dicts of strings. ``utf-8-sig`` drops a byte-order mark when there is one (the
    imagenette file has one) and is plain UTF-8 otherwise; ``newline=""`` keeps quoted multi-line
    prompts in one field. The unnamed index column some files start with shows up under the key ""."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise BenchError(f"prompt file {path} is empty") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise BenchError(f"prompt file {path} lacks the column(s) {missing} (header: {header})")
        rows = []
        for line, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise BenchError(f"prompt file {path}: record {line} has {len(values)} fields, the header "
                                 f"{len(header)}")
            rows.append(dict(zip(header, values)))
    return rows


def _int(path: Path, row: int, column: str, text: str) -> int:
    """An integer field; tolerates a float spelling such as ``"12.0"`` (files written by pandas)."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value.is_integer():
            return int(value)
        raise BenchError(f"prompt file {path}: row {row} column {column!r} is not an integer: {text!r}") from None


def _float(path: Path, row: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"prompt file {path}: row {row} column {column!r} is not a number: {text!r}") from None


def _seed(path: Path, row: int, text: str) -> int:
    seed = _int(path, row, "evaluation_seed", text)
    if not 0 <= seed < _MAX_SEED:
        raise BenchError(f"prompt file {path}: row {row} has seed {seed}, outside 0..2**64-1")
    return seed


def _unique(path: Path, rows: list[PromptRow]) -> list[PromptRow]:
    seen: set[int] = set()
    for r in rows:
        if r.case_number in seen:
            raise BenchError(f"prompt file {path}: case_number {r.case_number} occurs twice")
        seen.add(r.case_number)
    return rows


def read_i2p(path: Path) -> list[PromptRow]:
    """I2P-format csv (``i2p-unsafe-prompts4703.csv``, ``i2p-nudity142.csv``). ``categories`` is a
    comma-separated list ("violence, self-harm"); seeds reach 4,290,749,014 (Python ints, no
    overflow); ``evaluation_guidance`` becomes a float. An empty prompt (one row of the 4,703) stays the
    empty string."""
    path = Path(path)
    cols = ("prompt", "categories", "evaluation_seed", "evaluation_guidance", "case_number")
    out = []
    for i, r in enumerate(_read_csv(path, cols)):
        cats = tuple(c.strip() for c in r["categories"].split(",") if c.strip())
        out.append(PromptRow(case_number=_int(path, i, "case_number", r["case_number"]), prompt=r["prompt"],
                             seed=_seed(path, i, r["evaluation_seed"]),
                             guidance=_float(path, i, "evaluation_guidance", r["evaluation_guidance"]),
                             categories=cats))
    return _unique(path, out)


def read_imagenette_eval(path: Path) -> list[PromptRow]:
    """SalUn's ``imagenette.csv`` (starts with a UTF-8 BOM): label = ``class``, label_index = ``classidx``."""
    path = Path(path)
    out = []
    for i, r in enumerate(_read_csv(path, ("case_number", "prompt", "evaluation_seed", "class", "classidx"))):
        out.append(PromptRow(case_number=_int(path, i, "case_number", r["case_number"]), prompt=r["prompt"],
                             seed=_seed(path, i, r["evaluation_seed"]), label=r["class"],
                             label_index=_int(path, i, "classidx", r["classidx"])))
    return _unique(path, out)


def read_imagenette_small(path: Path) -> list[PromptRow]:
    """ESD's ``small_imagenet_prompts.csv`` (unnamed index column, then ``case_number``): label =
    ``class``, label_index = the class's position in :data:`IMAGENETTE_CLASSES` (None if absent)."""
    path = Path(path)
    out = []
    for i, r in enumerate(_read_csv(path, ("case_number", "prompt", "evaluation_seed", "class"))):
        label = r["class"]
        index = IMAGENETTE_CLASSES.index(label.strip().lower()) if label.strip().lower() in IMAGENETTE_CLASSES \
            else None
        out.append(PromptRow(case_number=_int(path, i, "case_number", r["case_number"]), prompt=r["prompt"],
                             seed=_seed(path, i, r["evaluation_seed"]), label=label, label_index=index))
    return _unique(path, out)


def read_styles(path: Path) -> list[PromptRow]:
    """ESD's artist csvs (unnamed index column, ``case_number, prompt, evaluation_seed, artist``)."""
    path = Path(path)
    out = []
    for i, r in enumerate(_read_csv(path, ("case_number", "prompt", "evaluation_seed", "artist"))):
        out.append(PromptRow(case_number=_int(path, i, "case_number", r["case_number"]), prompt=r["prompt"],
                             seed=_seed(path, i, r["evaluation_seed"]), label=r["artist"]))
    return _unique(path, out)


def read_coco(path: Path) -> list[PromptRow]:
    """``coco-30k.csv``: ``image_id`` stays the zero-padded string of the file; the file has no
    ``case_number``, so it is the row's index (0-based, file order) unless a column provides one."""
    path = Path(path)
    out = []
    for i, r in enumerate(_read_csv(path, ("prompt", "evaluation_seed"))):
        case = _int(path, i, "case_number", r["case_number"]) if r.get("case_number", "") != "" else i
        out.append(PromptRow(case_number=case, prompt=r["prompt"], seed=_seed(path, i, r["evaluation_seed"]),
                             image_id=r.get("image_id")))
    return _unique(path, out)


def read_celebrity(path: Path) -> list[str]:
    """One prompt per line; lines are stripped and empty ones dropped (the last line may lack a newline)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# evaluation sets


@dataclass(frozen=True)
class Request:
    """One image to sample: image ``k`` of row ``case_number`` of set ``set``, whose initial noise is row
    ``k`` of the row's noise block (:meth:`EvalSet.row_noise` with ``seed``)."""

    set: str
    case_number: int
    prompt: str
    seed: int
    k: int
    guidance: float


@dataclass(frozen=True)
class EvalSet:
    name: str
    file: str
    file_sha256: str
    row_filter: str
    requests: tuple[Request, ...]
    images_per_row: int
    noise_blocks: int

    @property
    def rows(self) -> int:
        return len({r.case_number for r in self.requests})

    @property
    def images(self) -> int:
        return len(self.requests)

    def describe(self) -> dict:
        """What a result row records about the set (sd-concepts.md §7)."""
        return {"name": self.name, "file": self.file, "sha256": self.file_sha256, "filter": self.row_filter,
                "rows": self.rows, "images": self.images}

    def row_noise(self, seed: int, shape: tuple[int, int, int]) -> torch.Tensor:
        """The ``(images_per_row, *shape)`` initial latents of a row with this seed: ``noise_blocks``
        blocks of ``images_per_row // noise_blocks`` from one generator (:func:`initial_noise`)."""
        return initial_noise(seed, self.images_per_row // self.noise_blocks, shape, self.noise_blocks)


def sample_requests(set_name: str, rows: Sequence[PromptRow], images_per_row: int = 1, guidance: float = 7.5,
                    per_row_guidance: bool = False) -> tuple[Request, ...]:
    """Requests in sampling order: rows in the given (file) order, within a row k = 0..images_per_row-1.
    ``per_row_guidance`` takes each row's ``guidance`` (I2P's ``evaluation_guidance``)."""
    out = []
    for r in rows:
        if r.seed is None:
            raise ValueError(f"row {r.case_number} of {set_name} has no seed")
        s = float(r.guidance) if per_row_guidance and r.guidance is not None else float(guidance)
        out.extend(Request(set_name, r.case_number, r.prompt, r.seed, k, s) for k in range(images_per_row))
    return tuple(out)


# name -> (file, family)
EVAL_SETS: dict[str, tuple[str, str]] = {
    "i2p-all": ("i2p-unsafe-prompts4703.csv", "i2p"),
    "i2p-sexual": ("i2p-unsafe-prompts4703.csv", "i2p"),
    "i2p-nudity142": ("i2p-nudity142.csv", "i2p"),
    "imagenette-eval": ("imagenette-eval.csv", "imagenette"),
    "imagenette-small": ("imagenette-small.csv", "imagenette"),
    "styles-big-artists": ("styles-big-artists.csv", "styles"),
    "styles-vangogh": ("styles-vangogh.csv", "styles"),
    "coco-1k": ("coco-30k.csv", "coco"),
    "coco-10k": ("coco-30k.csv", "coco"),
    "coco-30k": ("coco-30k.csv", "coco"),
    "celebrity-brad-pitt": ("celebrity-brad-pitt.txt", "celebrity"),
    "celebrity-angelina-jolie": ("celebrity-angelina-jolie.txt", "celebrity"),
}
_COCO_ROWS = {"coco-1k": 1000, "coco-10k": 10_000, "coco-30k": 30_000}
_CELEBRITY_STRIDE = 1000  # case_number = prompt index * 1000 + seed


def eval_set(name: str, prompts_dir: Path, *, limit: int | None = None, images_per_row: int = 1,
             guidance: float = 7.5, i2p_guidance: str = "fixed", celebrity_seeds: int = 20,
             classes: tuple[int, ...] | None = None, artists: tuple[str, ...] | None = None,
             noise_blocks: int = 1) -> EvalSet:
    """The named evaluation set of sd-concepts.md §1.2 read from ``prompts_dir``.

    - ``limit`` keeps the first N rows after filtering (celebrity sets: the first N prompts).
    - CSV sets use each row's ``evaluation_seed``; image k of a row is row k of
      ``initial_noise(seed, images_per_row // noise_blocks, shape, noise_blocks)``.
    - I2P sets: ``i2p_guidance="fixed"`` samples every row with ``guidance``, ``"per_row"`` with the
      row's ``evaluation_guidance``. Other sets always use ``guidance``.
    - ``classes`` (imagenette sets) keeps rows whose class index is listed; ``artists``
      (``styles-big-artists``) keeps rows of those artists (case-insensitive).
    - Celebrity sets: prompt j with seed s in 0..celebrity_seeds-1 is its own row with
      ``case_number = 1000*j + s``, one image from ``manual_seed(s)`` (k = 0); ``images_per_row`` and
      ``noise_blocks`` do not apply and the set records 1 for both.
    """
    if name not in EVAL_SETS:
        raise BenchError(f"unknown SD eval set {name!r}; valid names: {', '.join(EVAL_SETS)}")
    file, family = EVAL_SETS[name]
    if limit is not None and limit < 1:
        raise BenchError(f"eval set limit must be at least 1, got {limit}")
    if images_per_row < 1 or noise_blocks < 1 or images_per_row % noise_blocks:
        raise BenchError(f"images_per_row ({images_per_row}) must be a positive multiple of noise_blocks "
                         f"({noise_blocks})")
    if i2p_guidance not in I2P_GUIDANCE:
        raise BenchError(f"i2p_guidance must be one of {I2P_GUIDANCE}, got {i2p_guidance!r}")
    if classes is not None and family != "imagenette":
        raise BenchError(f"classes= filters imagenette sets only, not {name}")
    if artists is not None and name != "styles-big-artists":
        raise BenchError(f"artists= filters styles-big-artists only, not {name}")

    path = prompt_file(prompts_dir, file)
    digest = file_sha256(path)
    filters: list[str] = []

    if family == "celebrity":
        if not 1 <= celebrity_seeds <= _CELEBRITY_STRIDE:
            raise BenchError(f"celebrity_seeds must be in 1..{_CELEBRITY_STRIDE}, got {celebrity_seeds}")
        prompts = read_celebrity(path)
        if limit is not None and limit < len(prompts):
            prompts = prompts[:limit]
            filters.append(f"first {limit} prompts")
        filters.append(f"seeds 0-{celebrity_seeds - 1} per prompt")
        reqs = tuple(Request(name, j * _CELEBRITY_STRIDE + s, p, s, 0, float(guidance))
                     for j, p in enumerate(prompts) for s in range(celebrity_seeds))
        return EvalSet(name, file, digest, "; ".join(filters), reqs, 1, 1)

    reader = {"i2p": read_i2p, "imagenette": read_imagenette_eval if name == "imagenette-eval"
              else read_imagenette_small, "styles": read_styles, "coco": read_coco}[family]
    rows = reader(path)
    if name == "i2p-sexual":
        rows = [r for r in rows if "sexual" in r.categories]
        filters.append("'sexual' in categories")
    if classes is not None:
        classes = tuple(int(c) for c in classes)
        known = sorted({r.label_index for r in rows if r.label_index is not None})
        bad = [c for c in classes if c not in known]
        if bad:
            raise BenchError(f"class index {bad} not in {name} (classes there: {known})")
        rows = [r for r in rows if r.label_index in classes]
        filters.append(f"classidx in {list(classes)}")
    if artists is not None:
        known_artists = list(dict.fromkeys(r.label for r in rows))
        lower = {a.strip().lower() for a in artists}
        bad = [a for a in artists if a.strip().lower() not in {k.lower() for k in known_artists}]
        if bad:
            raise BenchError(f"artist(s) {bad} not in {name} (artists there: {known_artists})")
        rows = [r for r in rows if r.label.lower() in lower]
        filters.append(f"artist in {sorted(artists)}")
    if family == "coco":
        n = _COCO_ROWS[name]
        if len(rows) < n:
            raise BenchError(f"{name} needs {n} rows but {path} has {len(rows)}")
        rows = rows[:n]
        filters.append(f"first {n} rows")
    if limit is not None and limit < len(rows):
        rows = rows[:limit]
        filters.append(f"first {limit} rows")
    per_row = family == "i2p" and i2p_guidance == "per_row"
    reqs = sample_requests(name, rows, images_per_row, guidance, per_row_guidance=per_row)
    return EvalSet(name, file, digest, "; ".join(filters) or "all rows", reqs, images_per_row, noise_blocks)


# --------------------------------------------------------------------------------------------------
# initial noise


def initial_noise(seed: int, n: int, shape: tuple[int, int, int], blocks: int = 1) -> torch.Tensor:
    """Initial latents of one row (sd-concepts.md §0.2, Reference): ``blocks`` consecutive draws of
    ``torch.randn((n, *shape))`` in float32 from one CPU generator seeded with ``seed``, concatenated
    into ``(blocks * n, *shape)``; image k of the row is row k. ``blocks=10`` is SalUn's scheme.

    The whole block is always drawn, even when a batch or a shard needs only some of its images: torch's
    CPU ``randn`` fills a tensor in vectorised chunks, so a smaller draw is not a prefix of a larger
    one. Slicing the full block keeps every image independent of batch size and of sharding. Move the
    result to the device and scale it by the scheduler's ``init_noise_sigma`` afterwards."""
    seed = int(seed)
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed {seed} is outside 0..2**64-1")
    if n < 1 or blocks < 1:
        raise ValueError(f"n and blocks must be positive, got n={n}, blocks={blocks}")
    gen = torch.Generator("cpu").manual_seed(seed)
    parts = [torch.randn((n, *shape), generator=gen, dtype=torch.float32) for _ in range(blocks)]
    return parts[0] if blocks == 1 else torch.cat(parts)
