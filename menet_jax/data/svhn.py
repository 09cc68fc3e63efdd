"""SVHN cropped digits (Netzer et al., 2011): 32 x 32 x 3, 10 classes; 73,257 train, 26,032 test
and 531,131 extra images. Files: {train,test,extra}_32x32.mat (MATLAB; label 10 means digit 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from menet_jax.data import cifar10
from menet_jax.data.datasets import Dataset, Training, register


def has_split(root: Path, split: str) -> bool:
  """Whether `root` holds the split's .mat file."""
  return (root / f"{split}_32x32.mat").is_file()


def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """images (N, 32, 32, 3) uint8, labels (N,) int32 (digit d is label d)."""
  from scipy import io as sio  # only this reader needs it

  mat = sio.loadmat(root / f"{split}_32x32.mat")
  images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)), dtype=np.uint8)
  labels = mat["y"].reshape(-1).astype(np.int32)
  return images, np.where(labels == 10, 0, labels).astype(np.int32)


DATASET = register(Dataset(
    name="svhn_cropped", image_shape=(32, 32, 3), num_classes=10,
    splits=("train", "test", "extra"),
    # Per-channel mean and std of the training split, as commonly quoted for SVHN in PyTorch
    # code; the ME-Net release does not include its SVHN script.
    mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), pgd=cifar10.PGD,
    # ME-Net's Table 8: CIFAR-10's but lr 0.01.
    training=Training(model="resnet18", epochs=200, lr=0.01, lr_boundaries=(100, 150),
                      augment=True),
    has_split=has_split, read=read,
    files="train_32x32.mat, test_32x32.mat, extra_32x32.mat (http://ufldl.stanford.edu/housenumbers/)",
    subdirs=("svhn_cropped", "svhn"), tfds_name="svhn_cropped"))
