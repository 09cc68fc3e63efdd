"""A small CNN for CPU-scale experiments: fast to train on a few cores, not a paper model."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv
from menet_jax.models.resnet import CONV_INIT, DENSE_INIT


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2: (N, H, W, C) -> (N, H // 2, W // 2, C), odd last row/column dropped.

  The values of nn.max_pool(x, (2, 2), strides=(2, 2)), as a reshape and a max:
  XLA:CPU differentiates that much faster than max_pool's select-and-scatter,
  which took about a quarter of this model's training step on 2 CPU cores. Where
  a window holds tied maxima, the gradient is shared among them instead of going
  to one.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def features(x: jax.Array, widths: Sequence[int], *, train: bool, dtype) -> jax.Array:
  """The convolutional stages (3x3 conv without bias, batch norm, ReLU, 2x2 max-pool), to be
  called inside a compact module: (N, H, W, C) -> (N, H / 2^s, W / 2^s, widths[-1])."""
  for width in widths:
    x = Conv(width, (3, 3), padding=1, use_bias=False, dtype=dtype, kernel_init=CONV_INIT)(x)
    x = nn.relu(normalize.batch_norm(train, dtype)()(x))
    x = max_pool_2x2(x)
  return x


class SmallCNN(Classifier):
  """Stages of 3x3 conv, batch norm, ReLU and 2x2 max-pool, then a one-hidden-layer head.

  The defaults (16, 32, 64 channels, 128 hidden units; 156,186 parameters on
  32x32x3) keep the cost near 2.9 M multiply-adds per image, cheap on a CPU. The
  ResNet's first stage alone costs 150 M: on XLA's CPU backend the weight
  gradients of convolutions at full 32x32 resolution dominate a training step,
  which is why the first stage is narrow and every stage halves the resolution.
  On 28x28 inputs the maps shrink 28 -> 14 -> 7 -> 3 (pooling drops the odd row).

  Attributes:
    num_classes: number of output logits.
    widths: channels of each conv stage.
    hidden: width of the hidden dense layer.
    mean, std: per-channel input normalisation (default: CIFAR-10's; pass
      MNIST's, data.mnist, for 1-channel inputs).
    dtype: compute dtype; parameters stay float32.
  """
  widths: Sequence[int] = (16, 32, 64)
  hidden: int = 128

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs, e.g. (N, 32, 32, 3) or (N, 28, 28, 1)."""
    x = features(x, self.widths, train=train, dtype=self.dtype).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=DENSE_INIT)(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE_INIT)(x)
    return logits
