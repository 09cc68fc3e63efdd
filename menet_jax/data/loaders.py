"""Image classification datasets as numpy arrays, from local files or tensorflow-datasets.

`load(name, split, data_dir)` returns uint8 images (N, H, W, C) and int32 labels
for mnist, fashion_mnist, cifar10, svhn_cropped and tiny_imagenet. Two back-ends:

  files: the datasets' own published formats in a local directory, for offline
    and air-gapped machines:
      cifar10        cifar-10-batches-py/ (python pickles data_batch_1..5, test_batch)
      mnist,
      fashion_mnist  {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (IDX)
      svhn_cropped   {train,test,extra}_32x32.mat (MATLAB, label 10 means digit 0)
      tiny_imagenet  tiny-imagenet-200/ (wnids.txt, train/, val/)
    looked for in `data_dir`, in `data_dir/<name>` and the usual sub-folders, in
    $MENET_DATA_DIR when `data_dir` is None, and for fashion_mnist in Debian's
    /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist).
  tfds: a dataset that tensorflow-datasets has prepared (ArrayRecord, random
    access, no TensorFlow needed to read) in `data_dir`, or in TFDS's default
    folder ($TFDS_DATA_DIR, else ~/tensorflow_datasets) when `data_dir` is None.
    Only `download=True` lets TFDS download and prepare a missing dataset there;
    without it a missing dataset fails at once, with no network access and
    nothing written. tiny_imagenet is not in the TFDS catalog: files only.

backend="auto" uses local files when they are there and TFDS otherwise.
Splits accept TFDS-style slices, e.g. "test[:8000]", "test[8000:]", "train[:10%]".
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from absl import logging

from menet_jax.utils import validation

DATASETS = ("mnist", "fashion_mnist", "cifar10", "svhn_cropped", "tiny_imagenet")
BACKENDS = ("auto", "files", "tfds")
# (H, W, C) of each dataset's images.
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
                "svhn_cropped": (32, 32, 3), "tiny_imagenet": (64, 64, 3)}
SPLITS = {
    "mnist": ("train", "test"),
    "fashion_mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "svhn_cropped": ("train", "test", "extra"),
    "tiny_imagenet": ("train", "validation"),
}
# Sub-folders of data_dir searched for each dataset, then data_dir itself.
_SUBDIRS = {
    "mnist": ("mnist", "MNIST"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
    "cifar10": ("cifar10/cifar-10-batches-py", "cifar-10-batches-py", "cifar10"),
    "svhn_cropped": ("svhn_cropped", "svhn"),
    "tiny_imagenet": ("tiny-imagenet-200", "tiny_imagenet/tiny-imagenet-200", "tiny_imagenet"),
}
_SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
_EXPECTED = {
    "mnist": "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
             "t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/)",
    "fashion_mnist": "the four Fashion-MNIST IDX .gz files (github.com/zalandoresearch/fashion-mnist), "
                     "or `apt-get install dataset-fashion-mnist`",
    "cifar10": "cifar-10-batches-py/ with data_batch_1..5 and test_batch "
               "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked)",
    "svhn_cropped": "train_32x32.mat, test_32x32.mat, extra_32x32.mat "
                    "(http://ufldl.stanford.edu/housenumbers/)",
    "tiny_imagenet": "tiny-imagenet-200/ (http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped)",
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
         backend: str = "auto", download: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of a dataset.

  Reads only, unless `download` is True: a data directory given to read is never written to.

  Args:
    name: one of DATASETS.
    split: a split of the dataset (SPLITS[name]), optionally sliced TFDS-style.
    data_dir: where the local files are (and where TFDS keeps its prepared datasets).
    backend: "auto", "files" or "tfds".
    download: when no local files and no prepared TFDS copy are found, let tensorflow-datasets
      download and prepare the dataset into `data_dir` (TFDS's default folder when None).

  Returns:
    images: (N, H, W, C) uint8; labels: (N,) int32.

  Raises:
    FileNotFoundError: the split is neither in local files nor prepared by TFDS (and `download`
      is False), or TFDS failed to download or read it; the message says where it looked and
      how to get the data.
  """
  validation.choice("name", name, DATASETS)
  validation.choice("backend", backend, BACKENDS)
  base, start, stop = _parse_split(split)
  validation.choice("split", base, SPLITS[name])
  if data_dir is None and os.environ.get("MENET_DATA_DIR"):
    data_dir = os.environ["MENET_DATA_DIR"]
  looked = _candidate_dirs(name, data_dir) if backend != "tfds" else []
  for root in looked:
    if _has_files(name, base, root):
      images, labels = _READERS[name](root, base)
      lo, hi = _slice_bounds(len(labels), start, stop, split)
      return images[lo:hi], labels[lo:hi]
  missing = _Missing(name, split, data_dir, looked, searched_files=backend != "tfds")
  if backend == "files" or name == "tiny_imagenet":
    raise missing.error()
  lookup = _tfds_lookup(name, data_dir)
  if lookup.prepared is None and not download:
    raise missing.error(tfds=lookup)
  try:
    return _load_tfds(name, split, lookup)
  except Exception as e:  # noqa: BLE001 - any TFDS failure becomes one clear message
    raise missing.error(reason=f"tensorflow-datasets failed: {type(e).__name__}: {e}") from e


def _parse_split(split: str) -> tuple[str, str | None, str | None]:
  if not isinstance(split, str):
    raise ValueError(f"split must be a string such as 'train' or 'test[:8000]', got {split!r}")
  m = re.fullmatch(r"(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?", split)
  if m is None:
    raise ValueError(f"split must look like 'train', 'test[:8000]' or 'train[10%:]', got {split!r}")
  return m.group(1), m.group(2), m.group(3)


def _slice_bounds(n: int, start: str | None, stop: str | None, split: str) -> tuple[int, int]:
  def index(s: str | None, default: int) -> int:
    if s is None:
      return default
    if s.endswith("%"):
      pct = int(s[:-1])
      if not -100 <= pct <= 100:
        raise ValueError(f"split percentages must be in [-100, 100], got {split!r}")
      return round(n * pct / 100)
    return int(s)

  lo, hi = index(start, 0), index(stop, n)
  lo, hi = (lo + n if lo < 0 else lo), (hi + n if hi < 0 else hi)
  if not 0 <= lo < hi <= n:
    raise ValueError(f"split {split!r} selects no examples or runs past the {n} available")
  return lo, hi


def _candidate_dirs(name: str, data_dir) -> list[Path]:
  dirs = []
  if data_dir is not None:
    root = Path(data_dir).expanduser()
    dirs += [root / sub for sub in _SUBDIRS[name]] + [root]
  dirs += [Path(d) for d in _SYSTEM_DIRS.get(name, ())]
  return dirs


class _TfdsLookup(NamedTuple):
  """Where TFDS keeps prepared datasets, and what it holds of one."""
  prepared: Path | None  # the newest prepared version folder, <root>/<name>/<version>
  roots: list[Path]  # the data folders searched for it
  download_dir: Path  # where download=True would download and prepare it


class _Missing:
  """What was looked for, and where, for the one-line error of a split that is not there."""

  def __init__(self, name: str, split: str, data_dir, looked: list[Path], searched_files: bool):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.looked, self.searched_files = looked, searched_files

  def error(self, *, tfds: _TfdsLookup | None = None,
            reason: str | None = None) -> FileNotFoundError:
    """The FileNotFoundError; `tfds`: the TFDS folders in which no prepared copy was found."""
    name = self.name
    lines = [f"dataset {name!r} split {self.split!r} not found."]
    if self.looked:
      lines.append("Looked for local files in: " + ", ".join(str(d) for d in self.looked) + ".")
      lines += self._other_splits()
    elif self.searched_files:
      lines.append("No data_dir given (and $MENET_DATA_DIR unset): no local files searched.")
    if tfds is not None:
      lines.append("No tensorflow-datasets copy is prepared in "
                   + ", ".join(str(root / name) for root in tfds.roots)
                   + " (no <version>/dataset_info.json there).")
    where = ("a folder given as data_dir (or $MENET_DATA_DIR)" if self.data_dir is None
             else str(Path(self.data_dir).expanduser()))
    get = f"To get it: put {_EXPECTED[name]} in {where}"
    if tfds is not None:
      get += (f", or pass download=True (command line: --download) to let tensorflow-datasets "
              f"download and prepare it into {tfds.download_dir} (needs internet and TensorFlow: "
              f"pip install -r {TFDS_EXTRA})")
    lines.append(get + ".")
    if name == "tiny_imagenet":
      lines.append("tiny_imagenet is not in the TFDS catalog; only local files are supported.")
    if reason:
      lines.append(reason)
    return FileNotFoundError(" ".join(lines))

  def _other_splits(self) -> list[str]:
    """A hint when a searched folder holds the dataset's other splits (e.g. only MNIST's test)."""
    base = _parse_split(self.split)[0]
    for root in self.looked:
      present = [s for s in SPLITS[self.name] if s != base and _has_files(self.name, s, root)]
      if present:
        other, plural = present[0], "s" * (len(present) > 1)
        return [f"{root} holds only the {', '.join(map(repr, present))} split{plural}: to work "
                f"offline, split one, e.g. '{other}[:80%]' to train on and '{other}[80%:]' to test "
                f"on (command line: --train_split='{other}[:80%]' --test_split='{other}[80%:]')."]
    return []


def _first_existing(root: Path, names: list[str]) -> Path | None:
  for n in names:
    if (root / n).is_file():
      return root / n
  return None


def _idx_files(root: Path, split: str) -> tuple[Path | None, Path | None]:
  prefix = _IDX_PREFIX[split]
  images = _first_existing(root, [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte",
                                  f"{prefix}-images.idx3-ubyte"])
  labels = _first_existing(root, [f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte",
                                  f"{prefix}-labels.idx1-ubyte"])
  return images, labels


def _has_files(name: str, split: str, root: Path) -> bool:
  if not root.is_dir():
    return False
  if name in ("mnist", "fashion_mnist"):
    return all(p is not None for p in _idx_files(root, split))
  if name == "cifar10":
    if split == "test":
      return (root / "test_batch").is_file()
    return any((root / f"data_batch_{i}").is_file() for i in range(1, 6))
  if name == "svhn_cropped":
    return (root / f"{split}_32x32.mat").is_file()
  return (root / "wnids.txt").is_file() and (root / ("train" if split == "train" else "val")).is_dir()


def _read_idx(path: Path) -> np.ndarray:
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


def _read_mnist_like(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  images_path, labels_path = _idx_files(root, split)
  images, labels = _read_idx(images_path), _read_idx(labels_path)
  if len(images) != len(labels):
    raise ValueError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels")
  return images[..., None], labels.astype(np.int32)


def _read_cifar10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  if split == "test":
    files = [root / "test_batch"]
  else:
    files = [root / f"data_batch_{i}" for i in range(1, 6) if (root / f"data_batch_{i}").is_file()]
    if len(files) < 5:
      logging.warning("cifar10 train: only %d of the 5 training batches are in %s (%s); loading "
                      "%d images instead of 50000.", len(files), root,
                      ", ".join(f.name for f in files), 10000 * len(files))
  images, labels = [], []
  for f in files:
    with open(f, "rb") as fh:
      batch = pickle.load(fh, encoding="bytes")
    images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(np.asarray(batch[b"labels"], np.int32))
  return np.concatenate(images), np.concatenate(labels)


def _read_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  from scipy import io as sio  # only this reader needs it

  mat = sio.loadmat(root / f"{split}_32x32.mat")
  images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)), dtype=np.uint8)
  labels = mat["y"].reshape(-1).astype(np.int32)
  return images, np.where(labels == 10, 0, labels).astype(np.int32)


def _read_tiny_imagenet(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
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


_READERS = {
    "mnist": _read_mnist_like,
    "fashion_mnist": _read_mnist_like,
    "cifar10": _read_cifar10,
    "svhn_cropped": _read_svhn,
    "tiny_imagenet": _read_tiny_imagenet,
}


TFDS_EXTRA = "requirements-tfds.txt"


def _tfds_lookup(name: str, data_dir) -> _TfdsLookup:
  """Finds a version of `name` that TFDS has prepared, from local files only.

  Checks <root>/<name>/<version>/dataset_info.json: unlike building a `tfds.builder`, this reads
  no metadata from GCS and creates no temporary folder.
  """
  # Lazily: the package is unused with local files (its import takes a few tenths of a second).
  from tensorflow_datasets.core import constants
  from tensorflow_datasets.core.utils import file_utils

  # data_dir given: that folder only; else TFDS's default folder and any registered ones.
  roots = [Path(root).expanduser() for root in file_utils.list_data_dirs(data_dir)]
  found = [(version, root / name / str(version)) for root in roots
           for version in file_utils.list_dataset_versions(root / name)]
  download_dir = Path(data_dir if data_dir is not None else constants.DATA_DIR).expanduser()
  return _TfdsLookup(max(found)[1] if found else None, roots, download_dir)


def _load_tfds(name: str, split: str, tfds_lookup: _TfdsLookup) -> tuple[np.ndarray, np.ndarray]:
  """Reads the prepared copy, or (none prepared) downloads and prepares it first."""
  import tensorflow_datasets as tfds  # imported lazily: slow, and unused offline

  if tfds_lookup.prepared is not None:
    source = tfds.builder_from_directory(str(tfds_lookup.prepared)).as_data_source(split=split)
  else:
    target = tfds_lookup.download_dir
    logging.warning("%s: no local files and no prepared tensorflow-datasets copy, and "
                    "download=True: tensorflow-datasets downloads it into %s and prepares it "
                    "in %s.", name, target / "downloads", target / name)
    try:
      # ArrayRecord is the format tfds.data_source reads; with TensorFlow installed TFDS would
      # otherwise prepare TFRecord files, which it cannot read by index.
      source = tfds.data_source(name, split=split, data_dir=str(target),
                                builder_kwargs={"file_format": "array_record"})
    except ModuleNotFoundError as e:
      if e.name != "tensorflow":
        raise
      # Reading a prepared dataset needs no TensorFlow, but preparing one does: every TFDS
      # builder of these datasets reads the downloaded files with tf.io.gfile.
      raise ModuleNotFoundError(
          f"preparing {name!r} with tensorflow-datasets needs TensorFlow, which the pinned "
          f"environment leaves out (it is only needed to prepare a download): pip install -r "
          f"{TFDS_EXTRA}, or pip install tensorflow-cpu", name="tensorflow") from e
  n = len(source)
  if n == 0:
    raise ValueError(f"TFDS returned no examples for {name} {split}")
  first = source[0]
  images = np.empty((n,) + np.asarray(first["image"]).shape, np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    example = first if i == 0 else source[i]
    images[i] = example["image"]
    labels[i] = example["label"]
  return images, labels
