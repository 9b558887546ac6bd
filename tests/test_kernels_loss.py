"""Softmax and fused softmax + cross-entropy against PyTorch and finite differences."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnc.kernels.loss import (cross_entropy_of_probabilities, pixel_cross_entropy_of_probabilities,
                               pixel_softmax_cross_entropy, softmax_backward, softmax_channels_backward,
                               softmax_channels_forward, softmax_cross_entropy, softmax_forward)
from checks import check_backward_adds, cnhw, nchw, numeric_gradient, rel_err


@pytest.mark.parametrize("shape", [(5, 10), (2, 3, 7), (1, 4)])
def test_softmax_against_torch(shape):
    rng = np.random.default_rng(len(shape))
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    out = np.empty_like(x)
    softmax_forward(x, out)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.softmax(xt, dim=-1)
    assert rel_err(out, yt.detach().numpy()) < 1e-4

    check_backward_adds(softmax_backward, out, yt, xt, rng)


def test_softmax_is_stable_for_huge_logits():
    x = np.array([[1e4, 1e4 - 1, -1e4], [-1e30, 0.0, 1e30]], np.float32)
    out = np.empty_like(x)
    softmax_forward(x, out)
    assert np.isfinite(out).all()
    assert rel_err(out, F.softmax(torch.tensor(x), dim=-1).numpy()) < 1e-6


@pytest.mark.parametrize("n,k", [(7, 10), (1, 3)])
def test_softmax_cross_entropy_against_torch(n, k):
    rng = np.random.default_rng(n)
    logits = (4 * rng.standard_normal((n, k)) + 50).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int64)
    probs = np.empty_like(logits)
    dlogits = rng.standard_normal((n, k)).astype(np.float32)  # overwritten
    loss = softmax_cross_entropy(logits, labels, probs, dlogits, len(labels))
    assert isinstance(loss, float)

    lt = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(lt, torch.tensor(labels))
    ref.backward()
    assert abs(loss - ref.item()) / abs(ref.item()) < 1e-4
    assert rel_err(probs, F.softmax(lt, dim=-1).detach().numpy()) < 1e-4
    assert rel_err(dlogits, lt.grad.numpy()) < 1e-4


def test_softmax_cross_entropy_finite_differences():
    rng = np.random.default_rng(11)
    n, k = 3, 4
    logits = rng.standard_normal((n, k))
    labels = np.array([0, 3, 1], np.int64)
    probs, dlogits = np.empty_like(logits), np.empty_like(logits)
    softmax_cross_entropy(logits, labels, probs, dlogits, len(labels))
    numeric = numeric_gradient(lambda: softmax_cross_entropy(logits, labels, probs, np.empty_like(logits), len(labels)), logits)
    assert rel_err(dlogits, numeric) < 1e-6


def test_softmax_cross_entropy_rejects_bad_labels():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError):
        softmax_cross_entropy(logits, np.array([0, 3], np.int64), np.empty_like(logits), np.empty_like(logits), 2)


# Per pixel: C x N x H x W activations (cnnc's layout), N x H x W labels.


@pytest.mark.parametrize("n,c,h,w", [(3, 4, 5, 7), (1, 2, 1, 3)])
def test_softmax_channels_against_torch(n, c, h, w):
    rng = np.random.default_rng(n * 10 + c)
    xt = torch.tensor((3 * rng.standard_normal((n, c, h, w))).astype(np.float32), requires_grad=True)
    x = cnhw(xt)
    out = np.empty_like(x)
    softmax_channels_forward(x, out)
    yt = F.softmax(xt, dim=1)
    assert rel_err(out, cnhw(yt)) < 1e-4

    dout = rng.standard_normal(out.shape).astype(np.float32)
    yt.backward(nchw(dout))
    dx0 = rng.standard_normal(out.shape).astype(np.float32)
    dx = dx0.copy()
    softmax_channels_backward(out, dout, dx)
    assert rel_err(dx - dx0, cnhw(xt.grad)) < 1e-4


@pytest.mark.parametrize("n,c,h,w", [(3, 4, 5, 7), (2, 2, 3, 1)])
def test_pixel_softmax_cross_entropy_against_torch(n, c, h, w):
    """The mean over all N*H*W pixels, as F.cross_entropy on (N, C, H, W) logits."""
    rng = np.random.default_rng(n + c + h)
    lt = torch.tensor((4 * rng.standard_normal((n, c, h, w)) + 30).astype(np.float32), requires_grad=True)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int64)
    logits = cnhw(lt)
    probs = np.empty_like(logits)
    dlogits = rng.standard_normal(logits.shape).astype(np.float32)  # overwritten
    loss = pixel_softmax_cross_entropy(logits, labels, probs, dlogits, labels.size)

    ref = F.cross_entropy(lt, torch.tensor(labels))
    ref.backward()
    assert abs(loss - ref.item()) / abs(ref.item()) < 1e-5
    assert rel_err(probs, cnhw(F.softmax(lt, dim=1))) < 1e-5
    assert rel_err(dlogits, cnhw(lt.grad)) < 1e-5


def test_pixel_losses_finite_differences():
    rng = np.random.default_rng(12)
    c, n, h, w = 3, 2, 3, 2
    logits = rng.standard_normal((c, n, h, w))
    labels = rng.integers(0, c, (n, h, w)).astype(np.int64)
    probs, dlogits = np.empty_like(logits), np.empty_like(logits)
    pixel_softmax_cross_entropy(logits, labels, probs, dlogits, labels.size)
    numeric = numeric_gradient(
        lambda: pixel_softmax_cross_entropy(logits, labels, np.empty_like(logits), np.empty_like(logits), labels.size),
        logits)
    assert rel_err(dlogits, numeric) < 1e-6

    p = rng.uniform(0.1, 1.0, (c, n, h, w))
    dp = np.empty_like(p)
    loss = pixel_cross_entropy_of_probabilities(p, labels, dp, labels.size)
    picked = np.take_along_axis(p, labels[None], axis=0)
    assert loss == pytest.approx(-np.log(picked).mean(), rel=1e-12)
    numeric = numeric_gradient(
        lambda: pixel_cross_entropy_of_probabilities(p, labels, np.empty_like(p), labels.size), p)
    assert rel_err(dp, numeric) < 1e-6


def test_pixel_loss_shares_add_up_to_the_whole():
    """Replicas (lanes, processes) each get their images' share of the step: the sums over the
    step's pixels give the whole batch's loss and gradient."""
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((3, 5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (5, 4, 3)).astype(np.int64)
    whole = np.empty_like(logits)
    loss = pixel_softmax_cross_entropy(logits, labels, np.empty_like(logits), whole, labels.size)
    parts, shares = [slice(0, 2), slice(2, 5)], []
    for part in parts:
        x = np.ascontiguousarray(logits[:, part])
        d = np.empty_like(x)
        shares.append((pixel_softmax_cross_entropy(x, labels[part], np.empty_like(x), d, labels.size), d))
    assert sum(s for s, _ in shares) == pytest.approx(loss, rel=1e-6)
    assert rel_err(np.concatenate([d for _, d in shares], axis=1), whole) < 1e-6


def test_pixel_softmax_cross_entropy_rejects_bad_labels():
    logits = np.zeros((2, 1, 2, 2), np.float32)
    labels = np.array([[[0, 1], [2, 0]]], np.int64)
    with pytest.raises(ValueError):
        pixel_softmax_cross_entropy(logits, labels, np.empty_like(logits), np.empty_like(logits), 4)


@pytest.mark.parametrize("n,k,smoothing", [(7, 10, 0.1), (5, 3, 0.3), (1, 4, 0.9)])
def test_label_smoothing_against_torch(n, k, smoothing):
    rng = np.random.default_rng(n + k)
    logits = (3 * rng.standard_normal((n, k)) + 20).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int64)
    probs, dlogits = np.empty_like(logits), rng.standard_normal((n, k)).astype(np.float32)
    total = n + 2  # the images of a whole step, of which these are a share
    loss = softmax_cross_entropy(logits, labels, probs, dlogits, total, smoothing)

    lt = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(lt, torch.tensor(labels), label_smoothing=smoothing, reduction="sum") / total
    ref.backward()
    assert abs(loss - ref.item()) / abs(ref.item()) < 1e-5
    assert rel_err(dlogits, lt.grad.numpy()) < 1e-5


def test_label_smoothing_finite_differences():
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((3, 5))
    labels = np.array([4, 0, 2], np.int64)
    probs, dlogits = np.empty_like(logits), np.empty_like(logits)
    softmax_cross_entropy(logits, labels, probs, dlogits, 3, 0.2)
    numeric = numeric_gradient(
        lambda: softmax_cross_entropy(logits, labels, probs, np.empty_like(logits), 3, 0.2), logits)
    assert rel_err(dlogits, numeric) < 1e-6


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy_of_probabilities_against_torch(smoothing):
    """The unfused loss (a softmax output trained without the fusing pass) smooths the same way."""
    rng = np.random.default_rng(13)
    n, k = 6, 4
    probs = F.softmax(torch.tensor(rng.standard_normal((n, k)).astype(np.float32)), dim=-1).numpy().copy()
    labels = rng.integers(0, k, n).astype(np.int64)
    dprobs = rng.standard_normal((n, k)).astype(np.float32)
    loss = cross_entropy_of_probabilities(probs, labels, dprobs, n, smoothing)

    pt = torch.tensor(probs, requires_grad=True)
    target = (1 - smoothing) * F.one_hot(torch.tensor(labels), k) + smoothing / k  # torch's smoothed target
    ref = -(target * torch.log(pt)).sum(dim=1).mean()
    ref.backward()
    assert abs(loss - ref.item()) / abs(ref.item()) < 1e-5
    assert rel_err(dprobs, pt.grad.numpy()) < 1e-5
    p64 = probs.astype(np.float64)
    numeric = numeric_gradient(lambda: cross_entropy_of_probabilities(p64, labels, np.empty((n, k)), n, smoothing), p64)
    assert rel_err(dprobs, numeric) < 1e-4


@pytest.mark.parametrize("smoothing", [0.1, 0.4])
def test_pixel_label_smoothing_against_torch_and_finite_differences(smoothing):
    rng = np.random.default_rng(21)
    n, c, h, w = 2, 3, 4, 5
    lt = torch.tensor(rng.standard_normal((n, c, h, w)).astype(np.float32), requires_grad=True)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int64)
    logits = cnhw(lt)
    probs, dlogits = np.empty_like(logits), np.empty_like(logits)
    loss = pixel_softmax_cross_entropy(logits, labels, probs, dlogits, labels.size, smoothing)
    ref = F.cross_entropy(lt, torch.tensor(labels), label_smoothing=smoothing)
    ref.backward()
    assert abs(loss - ref.item()) / abs(ref.item()) < 1e-5
    assert rel_err(dlogits, cnhw(lt.grad)) < 1e-5

    p = rng.uniform(0.1, 1.0, (c, n, h, w))
    dp = np.empty_like(p)
    loss = pixel_cross_entropy_of_probabilities(p, labels, dp, labels.size, smoothing)
    q = (1 - smoothing) * (np.arange(c)[:, None, None, None] == labels[None]) + smoothing / c
    assert loss == pytest.approx(-(q * np.log(p)).sum() / labels.size, rel=1e-12)
    numeric = numeric_gradient(
        lambda: pixel_cross_entropy_of_probabilities(p, labels, np.empty_like(p), labels.size, smoothing), p)
    assert rel_err(dp, numeric) < 1e-6
