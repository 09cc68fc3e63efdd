"""Flax classifiers of the ME-Net experiments, by name (as `reconstruct.get`).

Every model maps pixel images x: (N, H, W, C) float in [0, 1] to float32 logits
(N, num_classes) as `model.apply(variables, x, train=...)`, normalising the input
itself. Models with batch norm keep running statistics in the 'batch_stats'
collection: pass `mutable=["batch_stats"]` when train=True.

    model = models.create("resnet18", num_classes=10)
    variables = model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import numpy as np

from menet_jax.models.classifier import Classifier
from menet_jax.models.densenet import DenseNet
from menet_jax.models.embedding import EmbeddingClassifier
from menet_jax.models.lenet import LeNet
from menet_jax.models.normalize import NORMALIZATION
from menet_jax.models.resnet import ResNet
from menet_jax.models.ride_cnn import RIDEMnistCNN
from menet_jax.models.small_cnn import SmallCNN
from menet_jax.models.vgg import VGG
from menet_jax.models.wide_resnet import WideResNet
from menet_jax.utils import validation
from menet_jax.utils.registry import Registry

MODELS = Registry("model")
# The attributes that define each named architecture are fixed; the rest (dtype, widths of
# the small CNN, ...) can be set by name. num_classes, mean and std come from the caller.
_HIDDEN = ("parent", "name", "num_classes", "mean", "std")


def register(name: str, cls: type[Classifier], *, normalization: str | None = None,
             **fixed) -> None:
  """Adds a `Classifier` subclass under `name`, with `fixed` architecture attributes.

  normalization: a key of `NORMALIZATION` that the model's recipe prescribes whatever the
  dataset (`normalization_of`); None normalises with the dataset's statistics.
  """
  MODELS.register(name, cls, fixed=fixed, hidden=_HIDDEN, normalization=normalization)


register("lenet", LeNet)
register("resnet18", ResNet, stage_sizes=(2, 2, 2, 2))
register("wrn-28-10", WideResNet, depth=28, widen_factor=10)
register("wrn-34-10", WideResNet, depth=34, widen_factor=10)
register("densenet121", DenseNet, block_sizes=(6, 12, 24, 16), growth_rate=32, bn_size=4)
register("small_cnn", SmallCNN)
register("ride_mnist_cnn", RIDEMnistCNN, normalization="mnist_examples")
register("vgg19_bn", VGG, layout="vgg19", batch_norm=True)
# The ER-Classifier's (shared/specs/ER-Classifier.md 1.6), on raw pixels as its lineage (WAE).
for _name, _encoder, _head in (("er_mnist", "wae", "bn_mlp"), ("er_cifar10", "vgg19", "dropout_mlp"),
                               ("er_stl10", "wae_stl10", "bn_mlp"),
                               ("er_tiny_imagenet", "vgg16_bn", "wide_mlp"),
                               # CPU scale, not the paper's: a small_cnn encoder, CIFAR's head.
                               ("er_cifar10_small", "small_cnn", "dropout_mlp")):
  register(_name, EmbeddingClassifier, normalization="raw", encoder=_encoder, head=_head)


def normalization_of(name: str, mean: Sequence[float], std: Sequence[float]
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) for model `name` on a dataset whose statistics are `mean` and `std`: the
  model recipe's own (`NORMALIZATION`) where it prescribes one, else the dataset's."""
  recipe = MODELS.entry(name.split("(")[0]).metadata["normalization"]
  return NORMALIZATION[recipe] if recipe else (tuple(mean), tuple(std))


def names() -> tuple[str, ...]:
  return MODELS.names()


def _stats(name: str, values: Sequence[float], positive: bool) -> tuple[float, ...]:
  try:
    arr = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError):  # not numbers, or ragged
    arr = None
  if arr is None or isinstance(values, (str, bytes)) or arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name} must be a non-empty sequence of per-channel values, got {values!r}")
  if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
    raise ValueError(f"{name} must hold finite{' positive' if positive else ''} numbers, "
                     f"got {tuple(arr.tolist())}")
  return tuple(arr.tolist())


def create(name: str, *, num_classes: int, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, **kwargs) -> nn.Module:
  """The classifier registered as `name`, e.g. create("wrn-34-10", num_classes=10).

  Args:
    name: one of `names()` ("densenet121", "er_cifar10", "er_mnist", "lenet", "resnet18",
      "small_cnn", "vgg19_bn", "wrn-28-10", ...), or a component string that sets free
      attributes, "small_cnn(widths=(8, 16))", "er_mnist(width=32)".
    num_classes: number of logits, >= 2.
    mean: per-channel input mean (one value, or one per channel) in pixel units;
      None keeps the model's default (the statistics of its paper's dataset: MNIST's for
      lenet, Tiny-ImageNet's for densenet121, CIFAR-10's otherwise).
    std: per-channel input standard deviation, > 0; None keeps the default.
    **kwargs: other attributes of the model class that the name leaves free,
      e.g. dtype (compute dtype; parameters stay float32).

  Returns:
    An unbound flax.linen Module; `init` / `apply` it with `train=` as a keyword.
  """
  attributes = {"num_classes": validation.integer_in("num_classes", num_classes, 2)}
  if mean is not None:
    attributes["mean"] = _stats("mean", mean, positive=False)
  if std is not None:
    attributes["std"] = _stats("std", std, positive=True)
  return MODELS.lookup(name, **kwargs)(**attributes)


__all__ = ["MODELS", "NORMALIZATION", "VGG", "Classifier", "DenseNet", "EmbeddingClassifier", "LeNet",
           "RIDEMnistCNN", "ResNet", "SmallCNN", "WideResNet", "create", "names", "normalization_of", "register"]
