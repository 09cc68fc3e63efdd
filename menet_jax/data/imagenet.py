"""ImageNet (ILSVRC-2012): 1,000 classes; 1,281,167 training and 50,000 validation images, served
at 224 x 224 x 3 by the standard evaluation transform: the shorter side resized to 256 (bilinear,
PIL's, as torchvision's Resize(256)), then the central 224 x 224 crop (CenterCrop(224)).

Files: an ILSVRC-2012 folder in the usual layout, train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the
validation images sorted into class folders, as torchvision's ImageFolder and the PyTorch ImageNet
example read them), or TFDS's `imagenet2012`, prepared (download=True, --download) from the
archives ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar put in TFDS's manual folder,
<data_dir>/downloads/manual/ (ImageNet's licence makes every copy a manual download); TFDS's
images of every size go through the same transform. A label is the index of its wnid in sorted
order, as in both.

Images are decoded when a slice is taken: "validation[:2000]" reads 2,000 files. What is loaded
is held in memory as uint8, 150 KB an image (the validation split 7.5 GB, the training split
193 GB): training on all of ImageNet needs a streaming input pipeline, which the project does not
have. No paper here trains on ImageNet (RIDE's Tables 1 and 4-6 put a defense in front of a
pretrained ResNet-50), so it has no training defaults: a run names its model and schedule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from menet_jax.data import tiny_imagenet
from menet_jax.data.datasets import Dataset, register

RESIZE, CROP = 256, 224
CLASSES = 1000
_FOLDER = {"train": "train", "validation": "val"}


def resize_and_crop(image) -> np.ndarray:
  """The evaluation transform of one image.

  Args:
    image: a PIL image, or (H, W, 3) uint8.

  Returns:
    (224, 224, 3) uint8: the shorter side resized to 256 (the longer to int(256 * long / short)),
    then the central crop, offset round((size - 224) / 2) on each axis.
  """
  from PIL import Image

  image = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)))
  image = image.convert("RGB")
  w, h = image.size
  size = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
  image = image.resize(size, Image.BILINEAR)
  w, h = image.size
  top, left = int(round((h - CROP) / 2)), int(round((w - CROP) / 2))
  return np.asarray(image.crop((left, top, left + CROP, top + CROP)), np.uint8)


class _Files:
  """A split's images, decoded and transformed when sliced (an array-like of (N, 224, 224, 3))."""
  dtype = np.dtype(np.uint8)

  def __init__(self, paths: list[Path]):
    self.paths = paths
    self.shape = (len(paths), CROP, CROP, 3)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: slice) -> np.ndarray:
    from PIL import Image

    paths = self.paths[index]
    out = np.empty((len(paths), CROP, CROP, 3), np.uint8)
    for i, path in enumerate(paths):
      with Image.open(path) as im:
        out[i] = resize_and_crop(im)
    return out


def _class_folders(root: Path, split: str) -> list[Path]:
  folder = root / _FOLDER[split]
  return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def has_split(root: Path, split: str) -> bool:
  """Whether `root` holds the split's folder of class folders."""
  return bool(_class_folders(root, split))


def read(root: Path, split: str) -> tuple[_Files, np.ndarray]:
  """The split's images (decoded when sliced) and labels (N,) int32 (sorted wnid index)."""
  classes = _class_folders(root, split)
  if len(classes) != CLASSES:
    raise ValueError(f"{root / _FOLDER[split]} holds {len(classes)} class folders, not the "
                     f"{CLASSES} wnids of ILSVRC-2012")
  paths, labels = [], []
  for label, folder in enumerate(classes):
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    paths += files
    labels += [label] * len(files)
  return _Files(paths), np.asarray(labels, np.int32)


DATASET = register(Dataset(
    name="imagenet", image_shape=(CROP, CROP, 3), num_classes=CLASSES,
    splits=("train", "validation"), test_split="validation",
    # torchvision's, as the pretrained classifiers of RIDE's tables normalise.
    mean=tiny_imagenet.MEAN, std=tiny_imagenet.STD,
    # RIDE's Table 2 ImageNet attack: l-inf, eps 0.05, step 0.01, 10 iterations.
    pgd=dict(eps=0.05, step_size=0.01, steps=10),
    training=None, has_split=has_split, read=read,
    files="ILSVRC-2012 as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the validation images in "
          "class folders; https://image-net.org/download, needs an account)",
    subdirs=("imagenet", "ILSVRC2012", "imagenet/ILSVRC2012"), tfds_name="imagenet2012",
    tfds_manual="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar", tfds_image=resize_and_crop))
