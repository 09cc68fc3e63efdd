"""Image classification datasets as numpy arrays, from local files or tensorflow-datasets.

`load(name, split, data_dir)` returns uint8 images (N, H, W, C) and int32 labels of a registered
dataset (data.dataset: mnist, fashion_mnist, cifar10, svhn_cropped, tiny_imagenet, stl10,
imagenet, and any a project registers). Two back-ends:

  files: the dataset's own published format in a local directory (its `files`), for offline and
    air-gapped machines, looked for in `data_dir`, in its sub-folders (the dataset's `subdirs`),
    in $MENET_DATA_DIR when `data_dir` is None, and in the dataset's `system_dirs`.
  tfds: a dataset that tensorflow-datasets has prepared (ArrayRecord, random
    access, no TensorFlow needed to read) in `data_dir`, or in TFDS's default
    folder ($TFDS_DATA_DIR, else ~/tensorflow_datasets) when `data_dir` is None.
    Only `download=True` lets TFDS download and prepare a missing dataset there;
    without it a missing dataset fails at once, with no network access and
    nothing written. A dataset without a `tfds_name` is read from files only.

backend="auto" uses local files when they are there and TFDS otherwise.
Splits accept TFDS-style slices, e.g. "test[:8000]", "test[8000:]", "train[:10%]".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from absl import logging

from menet_jax.data.datasets import Dataset
from menet_jax.data.datasets import get as dataset
from menet_jax.utils import validation

BACKENDS = ("auto", "files", "tfds")


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
         backend: str = "auto", download: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of a dataset.

  Reads only, unless `download` is True: a data directory given to read is never written to.

  Args:
    name: a registered dataset (data.names()).
    split: one of the dataset's splits, optionally sliced TFDS-style.
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
  return open_split(name, split, data_dir, backend=backend, download=download).read()


def count(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
          backend: str = "auto", download: bool = False) -> int:
  """How many examples `load` would return, for a check: a reader that decodes images when
  sliced (ImageNet's) or a TFDS copy decodes none. Arguments and errors as `load`'s."""
  return open_split(name, split, data_dir, backend=backend, download=download).size


class Opened(NamedTuple):
  """A split found (`open_split`): its number of examples, and read(first=None) -> its first
  `first` examples (all when None), images (first, H, W, C) uint8 and labels (first,) int32."""
  size: int
  read: Callable[..., tuple[np.ndarray, np.ndarray]]


def open_split(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
               backend: str = "auto", download: bool = False) -> Opened:
  """Finds a split once, to count it and then read as much of it as is needed (a reader that
  decodes when sliced, or a TFDS copy, decodes no other image). Arguments and errors as
  `load`'s."""
  ds = dataset(name)
  validation.choice("backend", backend, BACKENDS)
  base, start, stop = _parse_split(split)
  validation.choice("split", base, ds.splits)
  if data_dir is None and os.environ.get("MENET_DATA_DIR"):
    data_dir = os.environ["MENET_DATA_DIR"]
  looked = _candidate_dirs(ds, data_dir) if backend != "tfds" else []
  for root in looked:
    if root.is_dir() and ds.has_split(root, base):
      images, labels = ds.read(root, base)
      _check_read(ds, str(root), base, images, labels)
      lo, hi = _slice_bounds(len(labels), start, stop, split)

      def read_files(first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        end = hi if first is None else min(hi, lo + first)
        return np.asarray(images[lo:end]), labels[lo:end]

      return Opened(hi - lo, read_files)
  missing = _Missing(ds, split, data_dir, looked, searched_files=backend != "tfds")
  if backend == "files" or ds.tfds_name is None:
    raise missing.error()
  lookup = _tfds_lookup(ds.tfds_name, data_dir)
  if lookup.prepared is None and not download:
    raise missing.error(tfds=lookup)

  def tfds_failed(e: Exception) -> FileNotFoundError:
    return missing.error(reason=f"tensorflow-datasets failed: {type(e).__name__}: {e}")

  try:
    source = _tfds_source(ds, split, lookup)
  except Exception as e:  # noqa: BLE001 - any TFDS failure becomes one clear message
    raise tfds_failed(e) from e

  def read(first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
      images, labels = _read_tfds(ds, split, source, first)
    except Exception as e:  # noqa: BLE001
      raise tfds_failed(e) from e
    _check_read(ds, f"the tensorflow-datasets copy {ds.tfds_name}", split, images, labels)
    return images, labels

  return Opened(len(source), read)


def _check_read(ds: Dataset, where: str, split: str, images: np.ndarray,
                labels: np.ndarray) -> None:
  """A reader's output is what the dataset declares (a project's reader is checked here)."""
  where = f"{ds.name} {split} in {where}"
  if images.dtype != np.uint8 or images.shape[1:] != ds.image_shape:
    raise ValueError(f"{where}: the reader gave images {images.dtype} {images.shape[1:]}, "
                     f"not uint8 {ds.image_shape}")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
  if labels.size and not 0 <= labels.min() <= labels.max() < ds.num_classes:
    raise ValueError(f"{where}: labels run from {labels.min()} to {labels.max()}, outside "
                     f"[0, {ds.num_classes - 1}]")


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


def _candidate_dirs(ds: Dataset, data_dir) -> list[Path]:
  dirs = []
  if data_dir is not None:
    root = Path(data_dir).expanduser()
    dirs += [root / sub for sub in ds.subdirs] + [root]
  return dirs + [Path(d) for d in ds.system_dirs]


class _TfdsLookup(NamedTuple):
  """Where TFDS keeps prepared datasets, and what it holds of one."""
  prepared: Path | None  # the newest prepared version folder, <root>/<name>/<version>
  roots: list[Path]  # the data folders searched for it
  download_dir: Path  # where download=True would download and prepare it


class _Missing:
  """What was looked for, and where, for the one-line error of a split that is not there."""

  def __init__(self, ds: Dataset, split: str, data_dir, looked: list[Path],
               searched_files: bool):
    self.ds, self.split, self.data_dir = ds, split, data_dir
    self.looked, self.searched_files = looked, searched_files

  def error(self, *, tfds: _TfdsLookup | None = None,
            reason: str | None = None) -> FileNotFoundError:
    """The FileNotFoundError; `tfds`: the TFDS folders in which no prepared copy was found."""
    ds = self.ds
    lines = [f"dataset {ds.name!r} split {self.split!r} not found."]
    if self.looked:
      lines.append("Looked for local files in: " + ", ".join(str(d) for d in self.looked) + ".")
      lines += self._other_splits()
    elif self.searched_files:
      lines.append("No data_dir given (and $MENET_DATA_DIR unset): no local files searched.")
    if tfds is not None:
      lines.append("No tensorflow-datasets copy is prepared in "
                   + ", ".join(str(root / ds.tfds_name) for root in tfds.roots)
                   + " (no <version>/dataset_info.json there).")
    where = ("a folder given as data_dir (or $MENET_DATA_DIR)" if self.data_dir is None
             else str(Path(self.data_dir).expanduser()))
    get = f"To get it: put {ds.files} in {where}"
    if tfds is not None and ds.tfds_manual:
      get += (f", or put {ds.tfds_manual} in {tfds.download_dir / 'downloads' / 'manual'} and "
              f"pass download=True (command line: --download) to let tensorflow-datasets "
              f"prepare it there (needs TensorFlow: pip install -r {TFDS_EXTRA})")
    elif tfds is not None:
      get += (f", or pass download=True (command line: --download) to let tensorflow-datasets "
              f"download and prepare it into {tfds.download_dir} (needs internet and TensorFlow: "
              f"pip install -r {TFDS_EXTRA})")
    lines.append(get + ".")
    if ds.tfds_name is None:
      lines.append(f"{ds.name} is not in the TFDS catalog; only local files are supported.")
    if reason:
      lines.append(reason)
    return FileNotFoundError(" ".join(lines))

  def _other_splits(self) -> list[str]:
    """A hint when a searched folder holds the dataset's other splits (e.g. only MNIST's test)."""
    base = _parse_split(self.split)[0]
    for root in self.looked:
      present = [s for s in self.ds.splits
                 if s != base and root.is_dir() and self.ds.has_split(root, s)]
      if present:
        other, plural = present[0], "s" * (len(present) > 1)
        return [f"{root} holds only the {', '.join(map(repr, present))} split{plural}: to work "
                f"offline, split one, e.g. '{other}[:80%]' to train on and '{other}[80%:]' to test "
                f"on (command line: --train_split='{other}[:80%]' --test_split='{other}[80%:]')."]
    return []


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


def _tfds_source(ds: Dataset, split: str, tfds_lookup: _TfdsLookup):
  """The prepared copy's data source, or (none prepared) download and prepare it first."""
  import tensorflow_datasets as tfds  # imported lazily: slow, and unused offline

  name = ds.tfds_name
  if tfds_lookup.prepared is not None:
    return tfds.builder_from_directory(str(tfds_lookup.prepared)).as_data_source(split=split)
  target = tfds_lookup.download_dir
  logging.warning("%s: no local files and no prepared tensorflow-datasets copy, and "
                  "download=True: tensorflow-datasets downloads it into %s and prepares it "
                  "in %s.", name, target / "downloads", target / name)
  try:
    # ArrayRecord is the format tfds.data_source reads; with TensorFlow installed TFDS would
    # otherwise prepare TFRecord files, which it cannot read by index.
    return tfds.data_source(name, split=split, data_dir=str(target),
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


def _read_tfds(ds: Dataset, split: str, source, first: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
  """The first `first` examples (all when None) of a TFDS data source, each image through the
  dataset's `tfds_image`."""
  n = len(source) if first is None else min(first, len(source))
  if n == 0:
    raise ValueError(f"TFDS returned no examples for {ds.tfds_name} {split}")
  transform = ds.tfds_image or np.asarray
  images = np.empty((n, *ds.image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    example = source[i]
    images[i] = transform(example["image"])
    labels[i] = example["label"]
  return images, labels
