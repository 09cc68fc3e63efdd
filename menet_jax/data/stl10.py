"""STL-10 (Coates et al., 2011): 96 x 96 x 3, 10 classes; 5,000 labelled training and 8,000 test
images. One of the ER-Classifier's four datasets (its Figs. 2-3 and Table 3; its `er_stl10` model).

Files: stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, the published
binaries: each image 3 x 96 x 96 bytes, channel by channel, each channel stored column by
column; labels one byte each, 1 to 10. The 100,000 unlabelled images (unlabeled_X.bin) have no
labels and are not a split here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from menet_jax.data import tiny_imagenet
from menet_jax.data.datasets import Dataset, Training, register

_SIDE = 96


def has_split(root: Path, split: str) -> bool:
  """Whether `root` holds the split's image and label files."""
  return (root / f"{split}_X.bin").is_file() and (root / f"{split}_y.bin").is_file()


def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """images (N, 96, 96, 3) uint8, labels (N,) int32 (the files' 1..10 as 0..9)."""
  raw = np.fromfile(root / f"{split}_X.bin", np.uint8)
  labels = np.fromfile(root / f"{split}_y.bin", np.uint8).astype(np.int32) - 1
  per_image = 3 * _SIDE * _SIDE
  if raw.size % per_image or raw.size // per_image != labels.size:
    raise ValueError(f"{root / f'{split}_X.bin'} holds {raw.size} bytes, not {labels.size} images "
                     f"of {per_image} bytes (one per label of {split}_y.bin)")
  # (N, C, W, H) as stored (column-major channels) -> (N, H, W, C).
  images = raw.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 3, 2, 1)
  return np.ascontiguousarray(images), labels


DATASET = register(Dataset(
    name="stl10", image_shape=(_SIDE, _SIDE, 3), num_classes=10, splits=("train", "test"),
    # STL-10's images are drawn from ImageNet: its statistics (torchvision's) for the models that
    # normalise; the ER-Classifier's er_stl10 feeds raw pixels (its recipe's normalisation).
    mean=tiny_imagenet.MEAN, std=tiny_imagenet.STD,
    # The ER-Classifier's STL-10 eps 0.03, 7 steps of eps / 4 (the notes' choice for CIFAR-10).
    pgd=dict(eps=0.03, step_size=0.0075, steps=7),
    # The ER-Classifier's (shared/specs/ER-Classifier.md 1.4): its STL-10 network, Adam at lr
    # 1e-4 (the paper gives none; the notes' anchor), constant, no weight decay, 100 epochs, no
    # augmentation.
    training=Training(model="er_stl10", epochs=100, lr=1e-4, lr_boundaries=(), augment=False,
                      optimizer="adam", weight_decay=0.0),
    has_split=has_split, read=read,
    files="stl10_binary/ with train_X.bin, train_y.bin, test_X.bin and test_y.bin "
          "(https://cs.stanford.edu/~acoates/stl10/stl10_binary.tar.gz, unpacked)",
    subdirs=("stl10_binary", "stl10/stl10_binary", "stl10"), tfds_name="stl10"))
