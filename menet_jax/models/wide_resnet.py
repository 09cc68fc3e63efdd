"""Wide residual networks (Zagoruyko & Komodakis, 2016) as adversarial training uses them.

The blocks follow the PyTorch WideResNet of TRADES and of the ME-Net release
(models/wide_resnet.py), the port of Madry et al.'s WRN-34-10: pre-activation
blocks (BN, ReLU, conv, BN, ReLU, conv) whose 1x1-conv shortcut, where the width
or stride changes, takes the pre-activated input; no dropout. WRN-d-k has
(d - 4) / 6 blocks in each of three stages of 16k, 32k and 64k channels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv
from menet_jax.models.resnet import DENSE_INIT

# N(0, 2 / (k * k * out_channels)) as the reference code, i.e. He initialisation in fan-out mode.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class WideBasicBlock(nn.Module):
  """Pre-activation block: x + conv(relu(bn(conv(relu(bn(x)))))) with a 1x1 projection if needed."""
  features: int
  strides: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(N, H, W, C_in) -> (N, H / strides, W / strides, features)."""
    conv = lambda features, kernel, strides, padding: Conv(
        features, (kernel, kernel), strides=strides, padding=padding, use_bias=False,
        dtype=self.dtype, kernel_init=_CONV_INIT)
    norm = normalize.batch_norm(train, self.dtype)
    activated = nn.relu(norm()(x))
    # Padding 1 on both sides as PyTorch, so that a strided 3x3 conv and the 1x1
    # shortcut sample the same pixels.
    y = conv(self.features, 3, self.strides, 1)(activated)
    y = conv(self.features, 3, 1, 1)(nn.relu(norm()(y)))
    if x.shape[-1] == self.features and self.strides == 1:
      return x + y
    return conv(self.features, 1, self.strides, 0)(activated) + y


class WideResNet(Classifier):
  """WRN-depth-widen_factor for 32x32 inputs (works on any size through global pooling).

  WRN-28-10 has 36,479,194 and WRN-34-10 46,160,474 parameters for 10 classes
  (batch-norm scale and bias counted, running statistics not).

  Attributes:
    num_classes: number of output logits.
    depth: 6 n + 4 for n blocks per stage (28 or 34 in the literature).
    widen_factor: channel multiplier k (10 in the literature).
    mean, std: per-channel input normalisation (default: CIFAR-10's).
    dtype: compute dtype; parameters stay float32.
  """
  depth: int = 34
  widen_factor: int = 10

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs, e.g. (N, 32, 32, 3)."""
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(
          f"depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {self.depth}")
    blocks = (self.depth - 4) // 6
    x = Conv(16, (3, 3), padding=1, use_bias=False, dtype=self.dtype, kernel_init=_CONV_INIT)(x)
    for stage in range(3):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = WideBasicBlock(16 * 2**stage * self.widen_factor, strides, self.dtype)(x, train=train)
    x = nn.relu(normalize.batch_norm(train, self.dtype)()(x))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE_INIT)(x)
    return logits
