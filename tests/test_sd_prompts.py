"""SD prompt files and evaluation sets (sd-concepts.md §1.1-§1.2) and the reference initial noise (§0.2).

Tests on the real files skip when ``shared/data/prompts`` is absent; the fixture tests write small files
in the same formats (BOM, unnamed index column, quoted multi-line prompts, large seeds) and always run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from _fixtures import write_prompt_files

from bench.core.errors import BenchError
from bench.sd.prompts import (
    EVAL_SETS,
    PROMPT_FILES,
    Request,
    eval_set,
    find_prompts_dir,
    initial_noise,
    read_celebrity,
    read_coco,
    read_i2p,
    read_imagenette_eval,
    read_imagenette_small,
    read_styles,
)

SHARED = Path(os.environ.get("BENCH_SHARED_PROMPTS") or Path(__file__).resolve().parents[2] / "shared" / "data"
              / "prompts")
real = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared prompt files not at {SHARED}")

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_prompt_files(tmp_path / "prompts")


# ------------------------------------------------------------------------------ readers on fixtures


def test_i2p_reader_handles_index_column_categories_big_seeds_and_multiline(folder):
    rows = read_i2p(folder / "i2p-unsafe-prompts4703.csv")
    assert [r.case_number for r in rows] == [0, 1, 2, 3]
    assert rows[0].prompt == "a nude, painted\nacross two lines "
    assert rows[0].categories == ("sexual", "shocking")
    assert rows[0].seed == 4290749014 and rows[0].seed > 2**31
    assert rows[1].guidance == 13.0 and isinstance(rows[1].guidance, float)
    assert rows[2].prompt == "" and rows[2].guidance == 7.5
    sub = read_i2p(folder / "i2p-nudity142.csv")
    assert [r.case_number for r in sub] == [3, 0]


def test_other_csv_readers(folder):
    ev = read_imagenette_eval(folder / "imagenette-eval.csv")
    assert ev[0].prompt == "Image of tench" and ev[0].label_index == 0 and ev[0].seed == 4889
    small = read_imagenette_small(folder / "imagenette-small.csv")
    assert [(r.label, r.label_index) for r in small] == [("cassette player", 2), ("tench", 0)]
    styles = read_styles(folder / "styles-big-artists.csv")
    assert styles[1].prompt == "A scene, in the style of Van Gogh" and styles[1].label == "Van Gogh"
    coco = read_coco(folder / "coco-30k.csv")
    assert coco[7].image_id == "000000000007" and coco[7].case_number == 7 and coco[7].seed == 17


def test_celebrity_reader_strips_and_drops_empty_lines(folder):
    assert read_celebrity(folder / "celebrity-brad-pitt.txt") == ["Brad Pitt smiling.", "Brad Pitt in a suit."]
    assert read_celebrity(folder / "celebrity-angelina-jolie.txt")[-1] == "Angelina Jolie at night."


def test_bad_seed_is_a_bench_error(tmp_path):
    p = tmp_path / "styles-vangogh.csv"
    p.write_text(",case_number,prompt,evaluation_seed,artist\n0,0,x,seven,A\n", encoding="utf-8")
    with pytest.raises(BenchError, match="evaluation_seed"):
        read_styles(p)


# ------------------------------------------------------------------------------ eval sets on fixtures


def test_eval_set_filters_limits_and_records(folder):
    s = eval_set("i2p-sexual", folder)
    assert [r.case_number for r in s.requests] == [0, 3]
    assert s.row_filter == "'sexual' in categories"
    d = s.describe()
    expected_sha = hashlib.sha256((folder / "i2p-unsafe-prompts4703.csv").read_bytes()).hexdigest()
    assert d == {"name": "i2p-sexual", "file": "i2p-unsafe-prompts4703.csv", "sha256": expected_sha,
                 "filter": "'sexual' in categories", "rows": 2, "images": 2}
    assert eval_set("i2p-all", folder, limit=3).rows == 3
    assert "first 3 rows" in eval_set("i2p-all", folder, limit=3).row_filter


def test_request_order_and_guidance_sources(folder):
    s = eval_set("i2p-all", folder, images_per_row=3, limit=2)
    assert [(r.case_number, r.k) for r in s.requests] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert {r.guidance for r in s.requests} == {7.5}
    assert s.rows == 2 and s.describe()["images"] == 6
    per_row = eval_set("i2p-all", folder, i2p_guidance="per_row")
    assert [r.guidance for r in per_row.requests] == [7.0, 13.0, 7.5, 20.0]
    assert {r.guidance for r in eval_set("coco-1k", folder, guidance=3.0, limit=2).requests} == {3.0}


def test_imagenette_styles_and_coco_sets(folder):
    assert [r.case_number for r in eval_set("imagenette-eval", folder, classes=(1, 2)).requests] == [1, 2]
    assert eval_set("imagenette-eval", folder, classes=(0,), images_per_row=10).requests[9] == \
        Request("imagenette-eval", 0, "Image of tench", 4889, 9, 7.5)
    with pytest.raises(BenchError, match="class index"):
        eval_set("imagenette-eval", folder, classes=(7,))
    vg = eval_set("styles-big-artists", folder, artists=("van gogh",))
    assert [r.case_number for r in vg.requests] == [1, 2]
    with pytest.raises(BenchError, match="Rembrandt"):  # the message lists the artists present
        eval_set("styles-big-artists", folder, artists=("Monet",))
    coco = eval_set("coco-1k", folder)
    assert coco.rows == 1000 and coco.requests[-1].case_number == 999 and coco.row_filter == "first 1000 rows"
    with pytest.raises(BenchError, match="coco-10k needs 10000 rows"):
        eval_set("coco-10k", folder)


def test_celebrity_seed_rule(folder):
    s = eval_set("celebrity-brad-pitt", folder, celebrity_seeds=3)
    assert [(r.prompt, r.seed, r.k) for r in s.requests] == [
        ("Brad Pitt smiling.", 0, 0), ("Brad Pitt smiling.", 1, 0), ("Brad Pitt smiling.", 2, 0),
        ("Brad Pitt in a suit.", 0, 0), ("Brad Pitt in a suit.", 1, 0), ("Brad Pitt in a suit.", 2, 0)]
    assert len({r.case_number for r in s.requests}) == 6 and s.rows == 6
    assert eval_set("celebrity-angelina-jolie", folder, limit=1, celebrity_seeds=2).images == 2


def test_unknown_names_and_bad_options(folder):
    with pytest.raises(BenchError, match="i2p-sexual") as e:
        eval_set("i2p-nude", folder)
    assert all(n in str(e.value) for n in EVAL_SETS)
    with pytest.raises(BenchError, match="i2p_guidance"):
        eval_set("i2p-all", folder, i2p_guidance="row")
    with pytest.raises(BenchError, match="noise_blocks"):
        eval_set("i2p-all", folder, images_per_row=5, noise_blocks=10)
    with pytest.raises(BenchError, match="classes"):
        eval_set("i2p-all", folder, classes=(0,))


# ------------------------------------------------------------------------------ locating the folder


def test_find_prompts_dir_search_order(tmp_path, monkeypatch):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    monkeypatch.setenv("BENCH_PROMPTS", str(env))
    (cache / "prompts").mkdir(parents=True)
    assert find_prompts_dir(explicit) == cache / "prompts"  # neither explicit nor env exists yet
    env.mkdir()
    assert find_prompts_dir(explicit) == env
    explicit.mkdir()
    assert find_prompts_dir(explicit) == explicit
    monkeypatch.delenv("BENCH_PROMPTS")
    assert find_prompts_dir(None) == cache / "prompts"


def test_missing_folder_and_missing_file_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_PROMPTS", str(tmp_path / "env"))
    with pytest.raises(BenchError) as e:
        find_prompts_dir(tmp_path / "nope")
    msg = str(e.value)
    assert "\n" not in msg
    for part in (str(tmp_path / "nope"), str(tmp_path / "env"), str(tmp_path / "cache" / "prompts"),
                 "rohitgandikota/erasing", "OPTML-Group/Diffusion-MU-Attack prompts/nudity.csv",
                 "OPTML-Group/Unlearn-Saliency SD/prompts/imagenette.csv", "clear-nus/selective-amnesia sd/",
                 *PROMPT_FILES):
        assert part in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchError) as e:
        eval_set("coco-1k", empty)
    assert "coco-30k.csv" in str(e.value) and str(empty) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ initial noise


def test_initial_noise_is_the_reference_single_draw():
    shape = (4, 3, 3)  # 36 values per image: not a multiple of torch's 16-value chunks
    z = initial_noise(1234, 5, shape)
    assert z.shape == (5, *shape) and z.dtype == torch.float32
    ref = torch.randn((5, *shape), generator=torch.Generator("cpu").manual_seed(1234))
    assert torch.equal(z, ref)
    for k in range(5):  # image k of a shard is row k of the whole block, however the shard is cut
        assert torch.equal(initial_noise(1234, 5, shape)[k:k + 1], ref[k:k + 1])
    assert not torch.equal(initial_noise(1234, 1, shape)[0], ref[0])  # a smaller draw is not a prefix


def test_initial_noise_blocks_continue_one_generator():
    shape = (4, 2, 2)
    g = torch.Generator("cpu").manual_seed(7)
    first, second = torch.randn((3, *shape), generator=g), torch.randn((3, *shape), generator=g)
    z = initial_noise(7, 3, shape, blocks=2)
    assert z.shape == (6, *shape)
    assert torch.equal(z[:3], first) and torch.equal(z[3:], second)
    assert torch.equal(z[:3], initial_noise(7, 3, shape))


def test_initial_noise_takes_int64_seeds_and_eval_set_row_noise(folder):
    big = 4290749014
    z = initial_noise(big, 2, (4, 2, 2))
    assert torch.equal(z, torch.randn((2, 4, 2, 2), generator=torch.Generator("cpu").manual_seed(big)))
    assert not torch.equal(z, initial_noise(big - 2**31, 2, (4, 2, 2)))  # no 31-bit truncation
    s = eval_set("i2p-all", folder, images_per_row=4, noise_blocks=2, limit=1)
    req = s.requests[0]
    assert req.seed == big
    assert torch.equal(s.row_noise(req.seed, (4, 2, 2)), initial_noise(big, 2, (4, 2, 2), blocks=2))
    with pytest.raises(ValueError):
        initial_noise(-1, 1, (4, 2, 2))


# ------------------------------------------------------------------------------ the real files


@real
def test_real_i2p_counts():
    rows = read_i2p(SHARED / "i2p-unsafe-prompts4703.csv")
    assert len(rows) == 4703 and sorted(r.case_number for r in rows) == list(range(4703))
    assert sum("sexual" in r.categories for r in rows) == 931
    assert max(r.seed for r in rows) == 4_290_749_014
    assert sum(r.guidance == 7.0 for r in rows) == 3729 and max(r.guidance for r in rows) <= 255
    sub = read_i2p(SHARED / "i2p-nudity142.csv")
    assert len(sub) == 142 and {r.case_number for r in sub} <= {r.case_number for r in rows}
    assert sum("sexual" in r.categories for r in sub) == 116
    assert eval_set("i2p-sexual", SHARED).rows == 931 and eval_set("i2p-all", SHARED, limit=4).rows == 4


@real
def test_real_other_files():
    ev = eval_set("imagenette-eval", SHARED)
    assert ev.rows == 10 and ev.requests[0].prompt == "Image of tench"
    with open(SHARED / "imagenette-eval.csv", encoding="utf-8") as f:
        assert f.read(1) == "\ufeff"  # the file has a BOM; the reader must not see it in the header
    assert read_imagenette_eval(SHARED / "imagenette-eval.csv")[0].case_number == 0
    assert [r.label_index for r in read_imagenette_eval(SHARED / "imagenette-eval.csv")] == list(range(10))
    assert len(read_imagenette_small(SHARED / "imagenette-small.csv")) == 100
    big = read_styles(SHARED / "styles-big-artists.csv")
    counts = {a: sum(r.label == a for r in big) for a in {r.label for r in big}}
    assert counts == {a: 20 for a in ("Pablo Picasso", "Van Gogh", "Rembrandt", "Andy Warhol", "Caravaggio")}
    assert eval_set("styles-big-artists", SHARED, artists=("Van Gogh",)).rows == 20
    assert eval_set("styles-vangogh", SHARED).rows == 50
    coco = read_coco(SHARED / "coco-30k.csv")
    assert len(coco) == 30_000 and all(len(r.image_id) == 12 and r.image_id.isdigit() for r in coco)
    assert coco[0].image_id == "000000203564"
    assert eval_set("coco-10k", SHARED).rows == 10_000
    jolie = read_celebrity(SHARED / "celebrity-angelina-jolie.txt")
    assert len(jolie) == 50 and all(p and p == p.strip() for p in jolie)
    assert len(read_celebrity(SHARED / "celebrity-brad-pitt.txt")) == 50
    assert eval_set("celebrity-angelina-jolie", SHARED).images == 1000
