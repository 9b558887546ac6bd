"""A segmentation set made from Fashion-MNIST: each image's mask marks its garment.

A pixel above 0 is foreground (class 1), every other pixel background (class 0). The set is an
.npz that `cnnc train` reads as it is: x_train, x_test (uint8 N x 28 x 28 images) and y_train,
y_test (uint8 N x 28 x 28 masks, a class per pixel).

    python examples/fashion_segmentation.py [FASHION_MNIST_FOLDER] [OUT.npz] [--limit N]
    cnnc train examples/unet_tiny.cnn fashion_segmentation.npz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cnnc.files import atomic_write
from cnnc.train.data import IDX_FILES, read_idx

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def garment_masks(images: np.ndarray) -> np.ndarray:
    """uint8 masks of uint8 images: 1 where a pixel is above 0, else 0."""
    return (images > 0).astype(np.uint8)


def split_images(folder: Path, split: str, limit: int | None) -> np.ndarray:
    name = IDX_FILES[split][0]
    path = folder / name if (folder / name).exists() else folder / f"{name}.gz"
    return read_idx(path)[:limit]


def write_segmentation_set(folder, out, limit: int | None = None) -> dict[str, np.ndarray]:
    """Writes the set to `out` from the IDX files in `folder`, at most `limit` images per split;
    returns its arrays."""
    arrays = {}
    for split in ("train", "test"):
        x = split_images(Path(folder), split, limit)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, garment_masks(x)
    atomic_write(out, lambda f: np.savez_compressed(f, **arrays))
    return arrays


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", nargs="?", type=Path, default=FASHION_MNIST, help="the Fashion-MNIST IDX files")
    p.add_argument("out", nargs="?", type=Path, default=Path("fashion_segmentation.npz"))
    p.add_argument("--limit", type=int, help="at most N images per split")
    args = p.parse_args(argv)
    arrays = write_segmentation_set(args.source, args.out, args.limit)
    share = arrays["y_train"].mean()
    print(f"wrote {args.out}: {len(arrays['x_train'])} training and {len(arrays['x_test'])} test images, "
          f"{share:.1%} of the training pixels foreground")


if __name__ == "__main__":
    main()
