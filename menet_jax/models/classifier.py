"""The base of every classifier: pixel inputs, normalisation inside, float32 logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from menet_jax.data import cifar10
from menet_jax.models import normalize


class Classifier(nn.Module):
  """Maps pixel images to logits: (x - mean) / std, then the subclass's `logits`.

  A subclass defines `logits(self, x, *, train)` (decorated with nn.compact), the
  network on normalised inputs x (N, H, W, C) in `dtype`, returning
  (N, num_classes); it declares only its architecture's own fields.

  Attributes:
    num_classes: number of output logits.
    mean, std: per-channel input normalisation in pixel units (default:
      CIFAR-10's, `data.cifar10`).
    dtype: compute dtype; parameters and logits are float32 (float64 for a float64 model
      under jax_enable_x64, `normalize.wide_dtype`).
  """
  num_classes: int = 10
  mean: normalize.Stats = cifar10.MEAN
  std: normalize.Stats = cifar10.STD
  dtype: jnp.dtype = jnp.float32

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Logits for a batch of images.

    Args:
      x: (N, H, W, C) float in [0, 1].
      train: batch statistics and running-average updates (mutable 'batch_stats')
        if True, the running averages otherwise (models without batch norm ignore it).

    Returns:
      (N, num_classes) float32 logits (float64 for a float64 model).
    """
    x = normalize.normalize(x, self.mean, self.std).astype(self.dtype)
    return self.logits(x, train=train).astype(normalize.wide_dtype(self.dtype))
