"""A base-model build killed midway resumes from its last checkpoint and ends with the same weights as
an uninterrupted build (same batches, same noise, same optimizer and EMA state)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bench.assets.classes as A
from bench.assets.classes import Assets
from bench.tasks import get_task


class Killed(BaseException):
    pass


def _assets(cache, steps=200):
    task = get_task("digits-class")
    prof = task.profile("smoke")
    prof = dataclasses.replace(prof, pretrain=dataclasses.replace(prof.pretrain, steps=steps))
    return Assets(task, prof, torch.device("cpu"), cache, base_seed=0)


def test_killed_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    ref = _assets(tmp_path / "ref").base("raw").state_dict()

    real = A.train_diffusion
    calls = []

    def killed_after_second_checkpoint(*args, on_checkpoint=None, **kw):
        def hook(step, *rest):
            on_checkpoint(step, *rest)
            calls.append(step)
            if len(calls) == 2:
                raise Killed  # like a SIGKILL right after the checkpoint reached the disk
        return real(*args, on_checkpoint=hook, **kw)

    monkeypatch.setattr(A, "train_diffusion", killed_after_second_checkpoint)
    with pytest.raises(Killed):
        _assets(tmp_path / "c").base("raw")
    assert calls == [10, 20]
    assert list((tmp_path / "c" / "digits-class" / ".partial").glob("*.pt"))
    monkeypatch.setattr(A, "train_diffusion", real)

    resumed = _assets(tmp_path / "c")
    got = resumed.base("raw").state_dict()
    assert resumed.base_meta["resumed_at"] == 20
    assert not list((tmp_path / "c" / "digits-class" / ".partial").glob("*.pt"))
    for k, v in ref.items():
        assert torch.equal(v, got[k]), k
    ema_ref = _assets(tmp_path / "ref").base("ema").state_dict()
    ema = resumed.base("ema").state_dict()
    assert all(torch.allclose(ema_ref[k], ema[k], atol=1e-7) for k in ema_ref)
