"""Tiny-ImageNet (CS231n): 64 x 64 x 3, 200 classes; 100,000 training and 10,000 validation images.

Files: tiny-imagenet-200/ (wnids.txt, train/<wnid>/images/*.JPEG, val/images and
val/val_annotations.txt). Not in the TFDS catalog: local files only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from menet_jax.data import cifar10
from menet_jax.data.datasets import Dataset, Training, register

# The ImageNet constants of torchvision's pretrained models, the standard choice for
# DenseNet-121 (Tiny-ImageNet is a 200-class subset of ImageNet, downsampled to 64 x 64).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def has_split(root: Path, split: str) -> bool:
  """Whether `root` is a tiny-imagenet-200 folder with the split's images."""
  return (root / "wnids.txt").is_file() and (root / ("train" if split == "train" else "val")).is_dir()


def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """images (N, 64, 64, 3) uint8, labels (N,) int32 (the index of the wnid in sorted order)."""
  from PIL import Image

  wnids = sorted((root / "wnids.txt").read_text().split())
  index = {w: i for i, w in enumerate(wnids)}
  if split == "train":
    items = [(p, index[w]) for w in wnids for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]
  else:
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    items = [(root / "val" / "images" / ln.split("\t")[0], index[ln.split("\t")[1]])
             for ln in lines if ln.strip()]
  images = np.empty((len(items), 64, 64, 3), np.uint8)
  for i, (path, _) in enumerate(items):
    with Image.open(path) as im:
      images[i] = np.asarray(im.convert("RGB"))
  return images, np.asarray([label for _, label in items], np.int32)


DATASET = register(Dataset(
    name="tiny_imagenet", image_shape=(64, 64, 3), num_classes=200, splits=("train", "validation"),
    test_split="validation", mean=MEAN, std=STD, pgd=cifar10.PGD,
    # ME-Net's Table 8.
    training=Training(model="densenet121", epochs=90, lr=0.1, lr_boundaries=(30, 60),
                      augment=True),
    has_split=has_split, read=read,
    files="tiny-imagenet-200/ (http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped)",
    subdirs=("tiny-imagenet-200", "tiny_imagenet/tiny-imagenet-200", "tiny_imagenet")))
