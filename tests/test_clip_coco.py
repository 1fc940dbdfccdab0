"""The CLIP score and COCO FID metrics on tiny local stand-ins: a CLIP model built from a config (with the
micro model's character tokenizer and a 32 px image processor) and a fake feature extractor for the FID."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from bench.sd.micro import char_vocab, write_char_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(char_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    write_char_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images(n: int, seed: int, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_clip_score_is_100_times_the_clipped_cosine_of_the_projected_embeddings(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    from metrics.clip import ClipScorer

    scorer = ClipScorer(clip_dir)
    imgs, prompts = _images(5, 0), ["a handwritten digit zero", "a cat", "", "a digit seven", "x" * 200]
    got = scorer.scores(imgs, prompts)
    # the definition, from the model's own towers: CLS token -> projection, EOS token -> projection
    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        px = proc(images=[im.permute(1, 2, 0).numpy() for im in imgs], return_tensors="pt")["pixel_values"]
        v = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        tok = proc(text=prompts, return_tensors="pt", padding=True, truncation=True, max_length=77)
        t = model.text_projection(model.text_model(**tok).pooler_output)
    cos = (v / v.norm(dim=1, keepdim=True) * (t / t.norm(dim=1, keepdim=True))).sum(1)
    assert torch.allclose(got, 100 * cos.clamp(min=0), atol=1e-4)
    assert ((got >= 0) & (got <= 100)).all() and px.shape[-1] == 32
    # one score per pair, whatever the batching
    assert torch.allclose(ClipScorer(clip_dir, batch=2).scores(imgs, prompts), got, atol=1e-5)
    with pytest.raises(ValueError, match="5 images but 4 prompts"):
        scorer.scores(imgs, prompts[:4])


def test_clip_folder_errors_are_one_line(tmp_path, clip_dir):
    from metrics.clip import ClipScorer

    with pytest.raises(BenchError, match="not a CLIP model folder"):
        ClipScorer(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(BenchError, match="cannot load a transformers CLIPModel") as err:
        ClipScorer(tmp_path)
    assert "\n" not in str(err.value)


def test_coco_fid_reads_every_image_of_the_folder_whatever_its_size(tmp_path):
    from PIL import Image

    from metrics.concepts import coco_fid

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 30), (30, 20), (20, 30), (25, 25), (30, 20)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i:012d}.jpg")
    seen = []

    def features(u8: torch.Tensor) -> np.ndarray:  # a stand-in for Inception: per-channel mean and sd
        assert u8.dtype == torch.uint8 and u8.shape[1] == 3
        seen.append(tuple(u8.shape))
        x = u8.double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).numpy()

    gen = _images(6, 1, size=16)
    out = coco_fid(features, gen, tmp_path)
    assert out["fid_coco_n_ref"] == 5 and out["fid_coco_n_gen"] == 6
    assert sorted(s[0] for s in seen if s[2:] != (16, 16)) == [1, 2, 2]  # three sizes, batched by size
    assert math.isfinite(out["fid_coco"]) and out["fid_coco"] > 0
    # the same images on both sides: distance 0
    same = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("*.jpg"))
                                      if Image.open(p).size == (30, 20)])).permute(0, 3, 1, 2)
    for p in sorted(tmp_path.glob("*.jpg")):
        if Image.open(p).size != (30, 20):
            p.unlink()
    assert coco_fid(features, same, tmp_path)["fid_coco"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(BenchError, match="at least 2 real and 2 generated"):
        coco_fid(features, same[:1], tmp_path)


def test_clip_score_columns_on_an_sd_digits_cell(tmp_path, clip_dir, cache_root):
    """End to end: --metrics clip_score with --clip-model scores the remain and forget sets of a cell."""
    import json

    from bench.cli import main

    rc = main(["run", "--quiet", "--methods", "original", "--task", "sd-digits", "--profile", "smoke",
               "--cache", str(cache_root), "--out", str(tmp_path), "--metrics", "clip_score",
               "--clip-model", str(clip_dir)])
    assert rc == 0
    row = json.loads(next((tmp_path / "sd-digits" / "runs").glob("*/row.json")).read_text())
    assert 0 <= row["clip_score"] <= 100 and 0 <= row["clip_score_forget"] <= 100
    assert row["clip_score_n"] > 0 and row["clip_score_forget_n"] > 0
