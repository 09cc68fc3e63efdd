"""What the project knows about one dataset, and the registry that holds them.

A dataset is one module that builds a `Dataset` and calls `register` (menet_jax/data/cifar10.py
and its neighbours; a project's own is a module outside the package, loaded with --import or
an import). Everything else reads it from here: the loaders (where its files are and how to read
them, its TFDS name), the training configuration (its Table 8 defaults and PGD), the models (its
normalisation) and the entry points. Nothing else in the library branches on a dataset's name
(tests/test_architecture.py).

    data.register(data.Dataset(name="toy", image_shape=(8, 8, 1), num_classes=2, ...))
    data.dataset("cifar10").image_shape   # (32, 32, 3)
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from menet_jax.utils import validation
from menet_jax.utils.registry import Registry

Reader = Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
"""(folder, split) -> images (N, H, W, C) uint8, labels (N,) int32."""


@dataclasses.dataclass(frozen=True)
class Training:
  """A dataset's training defaults (ME-Net's Table 8 for the datasets of that paper).

  Attributes:
    model: a registered classifier (menet_jax.models).
    epochs, lr, lr_boundaries [epochs]: the step-decay schedule.
    augment: whether pad-4 crop and flip apply (data.input_pipeline.augment).
    optimizer: "sgd" (with momentum) or "adam" (training.config.OPTIMIZERS).
    weight_decay: coupled L2 weight decay.
  """
  model: str
  epochs: int
  lr: float
  lr_boundaries: tuple[int, ...]
  augment: bool
  # ME-Net's release (train_pure.py / train_adv.py): SGD, weight decay 1e-4.
  optimizer: str = "sgd"
  weight_decay: float = 1e-4

  def __post_init__(self):
    object.__setattr__(self, "lr_boundaries", tuple(self.lr_boundaries))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One image classification dataset.

  Attributes:
    name: its registered name, the --dataset of the command line.
    image_shape: (H, W, C) of its images.
    num_classes: labels are 0 .. num_classes - 1.
    splits: the splits `data.load` accepts (each may be sliced TFDS-style).
    test_split: the split a run tests on by default.
    mean, std: per-channel statistics of its pixels in [0, 1], with which a classifier
      normalises its input (models.normalize) unless the model's recipe prescribes its own.
    pgd: eps, step_size and steps of the dataset's l-inf PGD (pixels in [0, 1]): adversarial
      training's and the evaluation's default threat.
    training: the training defaults (`Training`); None where no paper here trains on the
      dataset (a run then names its model and schedule).
    has_split: (folder, split) -> whether the folder holds that split in the published format.
    read: (folder, split) -> (images, labels) (`Reader`).
    files: what to put in a data folder, and where to get it (for the error of a missing split).
    subdirs: sub-folders of a data folder searched before the folder itself.
    system_dirs: folders searched whatever the data folder (e.g. a Debian package's).
    tfds_name: its name in the tensorflow-datasets catalog, None if it has none.
    tfds_manual: the files TFDS cannot download itself, to be put in its manual folder
      (<data folder>/downloads/manual) before download=True can prepare the dataset; None: TFDS
      downloads everything.
    tfds_image: applied to each image TFDS gives, where those are not yet `image_shape` (e.g.
      ImageNet's resize and crop); None: used as they are.
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  splits: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  pgd: Mapping[str, float]
  training: Training | None
  has_split: Callable[[Path, str], bool]
  read: Reader
  files: str
  test_split: str = "test"
  subdirs: tuple[str, ...] = ()
  system_dirs: tuple[str, ...] = ()
  tfds_name: str | None = None
  tfds_manual: str | None = None
  tfds_image: Callable[[np.ndarray], np.ndarray] | None = None

  def __post_init__(self):
    h_w_c = self.image_shape
    if len(h_w_c) != 3 or not all(isinstance(d, int) and d >= 1 for d in h_w_c):
      raise ValueError(f"image_shape must be (H, W, C) positive integers, got {h_w_c!r}")
    validation.integer_in("num_classes", self.num_classes, 2)
    validation.choice("test_split", self.test_split, self.splits)
    for stats_name, stats in (("mean", self.mean), ("std", self.std)):
      if len(stats) not in (1, h_w_c[2]):
        raise ValueError(f"{stats_name} must have one entry per channel ({h_w_c[2]}) or one, "
                         f"got {stats!r}")
    if min(self.std) <= 0:
      raise ValueError(f"std must be positive, got {self.std!r}")
    if sorted(self.pgd) != ["eps", "step_size", "steps"]:
      raise ValueError(f"pgd must give eps, step_size and steps, got {dict(self.pgd)!r}")
    object.__setattr__(self, "pgd", types.MappingProxyType(dict(self.pgd)))


DATASETS = Registry("dataset")


def register(dataset: Dataset) -> Dataset:
  """Adds `dataset` under its name (once; a second dataset of that name is an error)."""
  DATASETS.register(dataset.name, lambda: dataset)
  return dataset


def get(name: str) -> Dataset:
  """The registered dataset `name`; a ValueError names the known ones."""
  if not isinstance(name, str):
    raise ValueError(f"dataset must be a name, one of {', '.join(names())}; got {name!r}")
  return DATASETS.create(name)


def names() -> tuple[str, ...]:
  """The registered datasets' names, sorted."""
  return DATASETS.names()
