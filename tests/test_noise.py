"""Counter-based device noise: per-image reproducibility (protocol.md §3.5) and Gaussian statistics."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models.noise import CounterNoise, counter_normal, image_keys


def test_noise_of_an_image_does_not_depend_on_its_batch():
    labels = torch.tensor([3, 3, 0, 7, 3, 1])
    index = torch.tensor([0, 1, 0, 0, 2, 5])
    whole = CounterNoise(11, labels, index, (1, 4, 4), "cpu")
    draws = [whole() for _ in range(3)]
    for k in range(len(labels)):
        alone = CounterNoise(11, labels[k:k + 1], index[k:k + 1], (1, 4, 4), "cpu")
        for d in range(3):
            assert torch.equal(alone(), draws[d][k:k + 1])
    shuffled = torch.tensor([5, 2, 0, 4, 1, 3])
    other = CounterNoise(11, labels[shuffled], index[shuffled], (1, 4, 4), "cpu")()
    assert torch.equal(other, draws[0][shuffled])


def test_seed_class_index_and_draw_all_change_the_noise():
    shape = (2, 3, 3)
    base = counter_normal(image_keys(0, torch.tensor([1]), torch.tensor([0])), 0, shape)
    for seed, c, i, d in [(1, 1, 0, 0), (0, 2, 0, 0), (0, 1, 1, 0), (0, 1, 0, 1), (2**32, 1, 0, 0)]:
        other = counter_normal(image_keys(seed, torch.tensor([c]), torch.tensor([i])), d, shape)
        assert not torch.allclose(base, other)


def test_values_are_standard_normal():
    keys = image_keys(5, torch.zeros(200, dtype=torch.long), torch.arange(200))
    z = counter_normal(keys, 0, (3, 16, 16)).flatten().double()
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 6 * math.sqrt(2 / n)
    # a few quantiles of N(0, 1): P(z < q)
    for q, p in [(-1.96, 0.025), (-1.0, 0.158655), (0.0, 0.5), (1.0, 0.841345), (1.96, 0.975)]:
        frac = (z < q).double().mean().item()
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n), (q, frac)
    # neighbouring elements and neighbouring images are uncorrelated
    a = z.view(200, -1)
    assert abs(torch.corrcoef(torch.stack([a[:, 0], a[:, 1]]))[0, 1].item()) < 0.25
    assert abs(torch.corrcoef(torch.stack([a[:-1].flatten(), a[1:].flatten()]))[0, 1].item()) < 0.02


def test_odd_sizes_are_filled():
    z = counter_normal(image_keys(0, torch.tensor([0, 1]), torch.tensor([0, 0])), 0, (1, 3, 3))
    assert z.shape == (2, 1, 3, 3) and torch.isfinite(z).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_noise_on_cpu_and_gpu():
    labels, index = torch.tensor([0, 4, 9]), torch.tensor([0, 3, 1])
    cpu = CounterNoise(7, labels, index, (3, 8, 8), "cpu")()
    gpu = CounterNoise(7, labels, index, (3, 8, 8), "cuda")()
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)
