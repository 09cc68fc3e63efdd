"""The IDX files of MNIST and Fashion-MNIST: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_PREFIX = {"train": "train", "test": "t10k"}


def _first_existing(root: Path, names: list[str]) -> Path | None:
  return next((root / n for n in names if (root / n).is_file()), None)


def _files(root: Path, split: str) -> tuple[Path | None, Path | None]:
  prefix = _PREFIX[split]
  return tuple(_first_existing(root, [f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte",
                                      f"{prefix}-{kind.replace('-', '.')}-ubyte"])
               for kind in ("images-idx3", "labels-idx1"))


def has_split(root: Path, split: str) -> bool:
  """Whether `root` holds the split's image and label files."""
  return all(p is not None for p in _files(root, split))


def read_array(path: Path) -> np.ndarray:
  """An unsigned-byte IDX file as an array of the shape its header gives."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
  if zero != b"\x00\x00" or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file")
  dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path} is truncated: header says {tuple(dims)}, found {data.size} bytes")
  return data.reshape(dims)


def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """images (N, 28, 28, 1) uint8, labels (N,) int32 of the split's IDX files."""
  images_path, labels_path = _files(root, split)
  images, labels = read_array(images_path), read_array(labels_path)
  if len(images) != len(labels):
    raise ValueError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels")
  return images[..., None], labels.astype(np.int32)
