"""CIFAR-10 (Krizhevsky, 2009): 32 x 32 x 3, 10 classes, 50,000 training and 10,000 test images.

Files: cifar-10-batches-py/ (the python pickles data_batch_1..5 and test_batch). A folder with
fewer than five training batches loads those it has, with a warning (../shared/data holds one).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from absl import logging

from menet_jax.data.datasets import Dataset, Training, register

# The ME-Net release's (train_pure.py / train_adv.py transforms.Normalize), the constants of
# kuangliu/pytorch-cifar. The std is not the per-channel pixel std of CIFAR-10 (about 0.247,
# 0.243, 0.261) but is kept so that results stay comparable with the release.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
# Section 3.3 of ME-Net: l-inf PGD, eps 8/255, step 2/255, 7 steps; also SVHN's and
# Tiny-ImageNet's.
PGD = dict(eps=8 / 255, step_size=2 / 255, steps=7)
_BATCHES = 5


def _train_files(root: Path) -> list[Path]:
  return [root / f"data_batch_{i}" for i in range(1, _BATCHES + 1)
          if (root / f"data_batch_{i}").is_file()]


def has_split(root: Path, split: str) -> bool:
  """Whether `root` holds the split's pickles."""
  return (root / "test_batch").is_file() if split == "test" else bool(_train_files(root))


def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """images (N, 32, 32, 3) uint8, labels (N,) int32 of the split's pickles."""
  files = [root / "test_batch"] if split == "test" else _train_files(root)
  if split == "train" and len(files) < _BATCHES:
    logging.warning("cifar10 train: only %d of the %d training batches are in %s (%s); loading "
                    "%d images instead of 50000.", len(files), _BATCHES, root,
                    ", ".join(f.name for f in files), 10000 * len(files))
  images, labels = [], []
  for f in files:
    with open(f, "rb") as fh:
      batch = pickle.load(fh, encoding="bytes")
    images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(np.asarray(batch[b"labels"], np.int32))
  return np.concatenate(images), np.concatenate(labels)


DATASET = register(Dataset(
    name="cifar10", image_shape=(32, 32, 3), num_classes=10, splits=("train", "test"),
    mean=MEAN, std=STD, pgd=PGD,
    # ME-Net's Table 8; weight decay 1e-4 and batch 256 are the release's (training.config).
    training=Training(model="resnet18", epochs=200, lr=0.1, lr_boundaries=(100, 150),
                      augment=True),
    has_split=has_split, read=read,
    files="cifar-10-batches-py/ with data_batch_1..5 and test_batch "
          "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked)",
    subdirs=("cifar10/cifar-10-batches-py", "cifar-10-batches-py", "cifar10"),
    tfds_name="cifar10"))
