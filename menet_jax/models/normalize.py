"""Input normalisation inside the classifier, and the batch-norm convention of all models.

Attacks and defenses work on pixels in [0, 1]: the perturbation budget (8/255,
0.3) and the [0, 1] clipping are defined there, and ME-Net reconstructs pixel
images. So every classifier takes pixel-space inputs and applies
(x - mean) / std as its first operation; gradients with respect to the input
are then gradients with respect to pixels, with no normalisation left for the
caller to forget.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Stats = tuple[float, ...]

# Normalisations that a model's recipe prescribes whatever the dataset (models.register); a
# dataset's own statistics are its `data.Dataset.mean` / `std`.
NORMALIZATION: dict[str, tuple[Stats, Stats]] = {
    # The MNIST mean and std of the PyTorch examples' MNIST CNN (RIDE's Table 2 classifier).
    "mnist_examples": ((0.1307,), (0.3081,)),
    # Pixels as they are, on any dataset: the ER-Classifier's lineage (WAE) feeds ToTensor() only.
    "raw": ((0.0,), (1.0,)),
}


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """(x - mean) / std per channel.

  Args:
    x: (N, H, W, C) float in [0, 1].
    mean: C per-channel means, or a single value for every channel.
    std: per-channel standard deviations, as `mean`.

  Returns:
    (N, H, W, C) float32, or float64 for float64 x (a float64 reference run).
  """
  if x.ndim != 4:
    raise ValueError(f"x must be a batch of images (N, H, W, C), got shape {tuple(x.shape)}")
  channels = x.shape[-1]
  for name, stats in (("mean", mean), ("std", std)):
    if len(stats) not in (1, channels):
      raise ValueError(f"{name} must have one entry per channel of x ({channels}) or a single "
                       f"entry, got {len(stats)}: {tuple(stats)}")
  x = jnp.asarray(x)
  dtype = wide_dtype(x.dtype)
  x = x.astype(dtype)
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def wide_dtype(dtype) -> jnp.dtype:
  """float32, or float64 when `dtype` is (only under jax_enable_x64): the dtype of a model's
  parameters, normalised inputs and logits whatever its compute dtype (bfloat16 computes
  from float32 parameters; a float64 model keeps every value in float64)."""
  return jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.floating) \
      else jnp.dtype(jnp.float32)


def batch_norm(train: bool, dtype: jnp.dtype) -> Callable[..., nn.BatchNorm]:
  """nn.BatchNorm with PyTorch's defaults (momentum 0.1 = flax 0.9, eps 1e-5).

  In training it normalises with the batch statistics and updates the running
  averages in the 'batch_stats' collection; in evaluation it uses those averages,
  so an image's output does not depend on the rest of its batch. Unlike PyTorch,
  flax updates the running variance with the biased batch variance (a factor
  (n - 1) / n, negligible for n = N H W).
  """
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=dtype)
