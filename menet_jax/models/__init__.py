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

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from menet_jax import validation
from menet_jax.models.densenet import DenseNet
from menet_jax.models.lenet import LeNet
from menet_jax.models.normalize import NORMALIZATION
from menet_jax.models.resnet import ResNet
from menet_jax.models.small_cnn import SmallCNN
from menet_jax.models.wide_resnet import WideResNet

# name -> (class, the attributes that define the architecture).
_MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "lenet": (LeNet, {}),
    "resnet18": (ResNet, {"stage_sizes": (2, 2, 2, 2)}),
    "wrn-28-10": (WideResNet, {"depth": 28, "widen_factor": 10}),
    "wrn-34-10": (WideResNet, {"depth": 34, "widen_factor": 10}),
    "densenet121": (DenseNet, {"block_sizes": (6, 12, 24, 16), "growth_rate": 32, "bn_size": 4}),
    "small_cnn": (SmallCNN, {}),
}


def names() -> tuple[str, ...]:
  return tuple(sorted(_MODELS))


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
    name: one of `names()`: "densenet121", "lenet", "resnet18", "small_cnn",
      "wrn-28-10", "wrn-34-10".
    num_classes: number of logits, >= 2.
    mean: per-channel input mean (one value, or one per channel) in pixel units;
      None keeps the model's default (`NORMALIZATION` of its dataset: mnist for
      lenet, tiny_imagenet for densenet121, cifar10 otherwise).
    std: per-channel input standard deviation, > 0; None keeps the default.
    **kwargs: other attributes of the model class that the name leaves free,
      e.g. dtype (compute dtype; parameters stay float32).

  Returns:
    An unbound flax.linen Module; `init` / `apply` it with `train=` as a keyword.
  """
  validation.choice("name", name, names())
  cls, architecture = _MODELS[name]
  attributes = {"num_classes": validation.integer_in("num_classes", num_classes, 2)}
  if mean is not None:
    attributes["mean"] = _stats("mean", mean, positive=False)
  if std is not None:
    attributes["std"] = _stats("std", std, positive=True)
  free = [f.name for f in dataclasses.fields(cls)
          if f.name not in {"parent", "name", "num_classes", "mean", "std", *architecture}]
  unknown = sorted(set(kwargs) - set(free))
  if unknown:
    raise ValueError(f"invalid arguments for model {name!r}: {', '.join(unknown)}; besides "
                     f"num_classes, mean and std it takes {', '.join(free) or 'nothing'}")
  return cls(**architecture, **attributes, **kwargs)


__all__ = ["NORMALIZATION", "DenseNet", "LeNet", "ResNet", "SmallCNN", "WideResNet", "create",
           "names"]
