"""``--classifier``: a user's own UA classifier for a class task, checked against the task's architecture."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from bench.core.errors import BenchError
from bench.engine.driver import CellSpec, Driver
from bench.engine.options import Options


def test_own_classifier_scores_like_the_harness_one(assets, original_row, cache_root, tmp_path):
    weights = tmp_path / "clf.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in assets.classifier().state_dict().items()}}, weights)
    d = Driver(Options(out=tmp_path / "runs", cache=cache_root, progress=False, classifier=weights), log=lambda m: None)
    row = d.run(CellSpec("digits-class", "original", 0, 0, "smoke"))
    # the same weights give the same scores; the row says where the classifier came from
    assert row["ua"] == original_row["ua"] and row["retain_acc"] == original_row["retain_acc"]
    assert row["classifier_test_acc"] == pytest.approx(assets.classifier_meta["test_acc"])
    assert row["classifier_source"] == str(weights) and row["cell"] != original_row["cell"]


def test_a_classifier_of_another_shape_is_one_clear_error(cache_root, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(bad))
    d = Driver(Options(out=tmp_path / "runs", cache=cache_root, progress=False, classifier=bad), log=lambda m: None)
    with pytest.raises(BenchError, match="does not match the task's digits-class classifier"):
        d.run(CellSpec("digits-class", "original", 0, 0, "smoke"))
