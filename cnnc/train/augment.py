"""Data augmentation and input normalization of the `train` line: `crop=P`, `flip=true`,
`normalize=auto` or `mean=M std=S`.

Augmentation is drawn once per epoch, for every training image, from the trainer's random
generator (`draw`), just before the epoch's shuffle: an offset (dy, dx) in [0, 2P] and a flip
bit per image, indexed by the image's position in the training set. A step then applies them to
its images (`apply`), whatever the order, batch or process that computes it, so runs reproduce,
resume bit for bit (the generator is in the checkpoint) and agree across MPI ranks.

A crop pads the image with P zeros on every side and takes the HxW window at (dy, dx), as
torchvision's RandomCrop(size, padding=P) does; a flip mirrors the columns (RandomHorizontalFlip).
Both happen in the images' own scale, before normalization, so the padding is black.

Normalization, (x - mean[c]) / std[c] per channel, belongs to the network (runtime.Network's
`normalization`): training, evaluation, prediction and the ONNX export all apply it, and it is
saved with the weights as `input.mean` and `input.std` (C values each, checkpoint.NORMALIZATION_NAMES).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)
class Plan:
    """One epoch's augmentation: per training image, its crop offsets and whether it is flipped."""

    pad: int
    dy: np.ndarray  # int64 (N,): rows skipped at the top of the padded image, 0..2*pad
    dx: np.ndarray  # int64 (N,): columns skipped at the left
    flip: np.ndarray | None  # bool (N,), None without flips

    def apply(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The images x (B x C x H x W), the training images `rows`, augmented (a new array)."""
        return augment(x, self.dy[rows], self.dx[rows], None if self.flip is None else self.flip[rows], self.pad)


def draw(n: int, crop: int, flip: bool, rng: np.random.Generator) -> Plan | None:
    """The augmentation of an epoch of n images; None when the recipe has none (nothing is drawn)."""
    if not crop and not flip:
        return None
    dy = rng.integers(0, 2 * crop + 1, n) if crop else np.zeros(n, np.int64)
    dx = rng.integers(0, 2 * crop + 1, n) if crop else np.zeros(n, np.int64)
    flips = rng.random(n) < 0.5 if flip else None
    return Plan(int(crop), dy, dx, flips)


def augment(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray | None, pad: int) -> np.ndarray:
    """Crop every image of x (B x C x H x W) to the window at (dy, dx) of it padded with `pad`
    zeros, then mirror those with `flip`; one gather over the padded batch."""
    b, c, h, w = x.shape
    padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), x.dtype) if pad else x
    if pad:
        padded[:, :, pad:pad + h, pad:pad + w] = x
    rows = dy[:, None] + np.arange(h)  # B x H
    cols = np.broadcast_to(np.arange(w), (b, w))
    if flip is not None:
        cols = np.where(flip[:, None], cols[:, ::-1], cols)
    cols = dx[:, None] + cols  # B x W
    return padded[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def channel_statistics(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of images N x C x H x W, in float64 over chunks."""
    c = x.shape[1]
    total, squares, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = total / max(count, 1)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.float64) - mean[None, :, None, None]
        squares += (part * part).sum(axis=(0, 2, 3))
    std = np.sqrt(squares / max(count, 1))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def normalization(r, x_train: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The recipe's (mean, std) per channel: computed from the training images for
    normalize=auto, the same given value for every channel with mean= and std=, or None."""
    if r.normalize == "auto":
        return channel_statistics(x_train)
    if r.mean is not None and r.std is not None:
        return np.full(channels, r.mean, np.float32), np.full(channels, r.std, np.float32)
    return None


def normalized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std per channel, a new float32 array."""
    out = x - mean[None, :, None, None]
    out /= std[None, :, None, None]
    return out
