"""cnnc/train/augment.py: random crops and flips against PyTorch, drawn reproducibly; normalization."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnc.runtime import compile_source
from cnnc.train.augment import augment, channel_statistics, draw, normalization
from cnnc.train.loop import Recipe


def torch_crop_flip(x: np.ndarray, dy, dx, flip, pad: int) -> np.ndarray:
    """torchvision's RandomCrop(padding=pad) then RandomHorizontalFlip, with the draws given."""
    h, w = x.shape[2:]
    padded = F.pad(torch.from_numpy(x), (pad, pad, pad, pad))
    out = []
    for i in range(len(x)):
        window = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(torch.flip(window, dims=[-1]) if flip is not None and flip[i] else window)
    return torch.stack(out).numpy()


@pytest.mark.parametrize("shape, pad, flips", [((6, 3, 7, 5), 2, True), ((5, 1, 9, 9), 1, False),
                                               ((4, 2, 4, 6), 0, True), ((3, 1, 5, 3), 3, True)])
def test_crop_and_flip_against_torch(shape, pad, flips):
    rng = np.random.default_rng(sum(shape) + pad)
    x = (rng.standard_normal(shape) + 0.5).astype(np.float32)  # no zeros: padding shows as zeros
    dy, dx = rng.integers(0, 2 * pad + 1, len(x)), rng.integers(0, 2 * pad + 1, len(x))
    flip = rng.random(len(x)) < 0.5 if flips else None
    ours = augment(x, dy, dx, flip, pad)
    assert ours.shape == x.shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, torch_crop_flip(x, dy, dx, flip, pad))
    if pad:  # the extreme offsets bring in zero rows and columns
        corner = augment(x[:1], np.array([0]), np.array([0]), None, pad)
        assert np.all(corner[0, :, :pad] == 0) and np.all(corner[0, :, :, :pad] == 0)


def test_a_plan_is_drawn_from_the_seed_and_applies_per_image():
    n, x = 50, np.random.default_rng(0).random((50, 1, 6, 6)).astype(np.float32)
    a, b = draw(n, 2, True, np.random.default_rng(4)), draw(n, 2, True, np.random.default_rng(4))
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("dy", "dx", "flip"))
    assert a.dy.min() == 0 and a.dy.max() == 4 and 10 < a.flip.sum() < 40
    # An image is augmented the same whatever batch or position it comes in.
    rows = np.random.default_rng(1).permutation(n)
    whole = a.apply(x[rows], rows)
    parts = np.concatenate([a.apply(x[rows[i:i + 7]], rows[i:i + 7]) for i in range(0, n, 7)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole[3], augment(x[rows[3]][None], a.dy[rows[3:4]], a.dx[rows[3:4]],
                                                    a.flip[rows[3:4]], 2)[0])


def test_no_augmentation_draws_nothing():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    assert draw(10, 0, False, rng) is None
    assert rng.bit_generator.state == state
    only_flips = draw(10, 0, True, rng)
    assert not only_flips.dy.any() and not only_flips.dx.any()


def test_channel_statistics_and_the_recipes_normalization():
    x = np.random.default_rng(2).random((1000, 3, 5, 7)).astype(np.float32) * [[[2]], [[1]], [[0.5]]]
    mean, std = channel_statistics(x.astype(np.float32), chunk=300)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)
    assert normalization(Recipe(), x, 3) is None
    given_mean, given_std = normalization(Recipe(mean=0.5, std=0.25), x, 3)
    assert given_mean.tolist() == [0.5] * 3 and given_std.tolist() == [0.25] * 3
    np.testing.assert_array_equal(normalization(Recipe(normalize="auto"), x, 3)[0], channel_statistics(x)[0])


NET = """\
model norm
input 2x5x5
conv filters=3 size=3 padding=1
flatten
dense units=4
loss cross_entropy
"""


def test_the_network_normalizes_in_inference_and_training():
    net = compile_source(NET)
    rng = np.random.default_rng(3)
    x, y = rng.random((6, 2, 5, 5)).astype(np.float32), rng.integers(0, 4, 6)
    mean, std = np.array([0.3, 0.6], np.float32), np.array([0.5, 2.0], np.float32)
    by_hand = (x - mean[:, None, None]) / std[:, None, None]
    plain = net.forward(by_hand)
    loss, _ = net.loss_grads_correct(by_hand, y)
    grads, before = net.grad_vector.copy(), x.copy()
    net.normalization = (mean, std)
    np.testing.assert_allclose(net.forward(x), plain, rtol=1e-6, atol=1e-6)
    assert net.loss_grads_correct(x, y)[0] == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(net.grad_vector, grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, before)  # the caller's images are left alone
