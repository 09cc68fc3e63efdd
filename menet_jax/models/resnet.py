"""ResNet with BasicBlocks (He et al., 2016), CIFAR variant, as ME-Net's ResNet-18.

The CIFAR variant (kuangliu/pytorch-cifar, which the ME-Net release uses) keeps
the ImageNet ResNet-18's four stages of 64/128/256/512 channels but replaces the
7x7/2 stem and its max-pool by one 3x3/1 convolution, so a 32x32 image reaches
the last stage at 4x4 rather than 1x1.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv

# He initialisation, fan-out mode, as torchvision's ResNet.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with a zero bias.
DENSE_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with batch norm and an identity or 1x1-conv shortcut."""
  features: int
  strides: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(N, H, W, C_in) -> (N, H / strides, W / strides, features)."""
    conv = lambda features, kernel, strides, padding: Conv(
        features, (kernel, kernel), strides=strides, padding=padding, use_bias=False,
        dtype=self.dtype, kernel_init=CONV_INIT)
    norm = normalize.batch_norm(train, self.dtype)
    # Symmetric padding 1 as PyTorch: with stride 2, 'SAME' would pad only after the
    # image and sample other pixels than the 1x1 shortcut does.
    y = nn.relu(norm()(conv(self.features, 3, self.strides, 1)(x)))
    y = norm()(conv(self.features, 3, 1, 1)(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = norm()(conv(self.features, 1, self.strides, 0)(x))
    return nn.relu(x + y)


class ResNet(Classifier):
  """CIFAR ResNet: 3x3 stem, stages of BasicBlocks, global average pool, dense.

  With stage_sizes (2, 2, 2, 2) this is ResNet-18: 11,173,962 parameters for
  10 classes (batch-norm scale and bias counted, running statistics not).

  Attributes:
    num_classes: number of output logits.
    stage_sizes: BasicBlocks per stage; stage i has 64 * 2**i channels and all
      but the first start with stride 2.
    mean, std: per-channel input normalisation (default: CIFAR-10's).
    dtype: compute dtype; parameters stay float32.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs, e.g. (N, 32, 32, 3)."""
    x = Conv(64, (3, 3), padding=1, use_bias=False, dtype=self.dtype, kernel_init=CONV_INIT)(x)
    x = nn.relu(normalize.batch_norm(train, self.dtype)()(x))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(64 * 2**stage, strides, self.dtype)(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE_INIT)(x)
    return logits
