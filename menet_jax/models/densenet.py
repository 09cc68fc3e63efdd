"""DenseNet-BC (Huang et al., 2017), DenseNet-121 as ME-Net uses it for Tiny-ImageNet."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from menet_jax.data import tiny_imagenet
from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv
from menet_jax.models.resnet import DENSE_INIT

# He initialisation, fan-in mode, as torchvision's DenseNet (nn.init.kaiming_normal_).
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
  """Bottleneck layer: BN, ReLU, 1x1 conv to bn_size * growth, BN, ReLU, 3x3 conv to growth."""
  growth_rate: int
  bn_size: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(N, H, W, C) -> (N, H, W, C + growth_rate): the input with the new features appended."""
    norm = normalize.batch_norm(train, self.dtype)
    y = Conv(self.bn_size * self.growth_rate, (1, 1), use_bias=False, dtype=self.dtype,
                kernel_init=_CONV_INIT)(nn.relu(norm()(x)))
    y = Conv(self.growth_rate, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                kernel_init=_CONV_INIT)(nn.relu(norm()(y)))
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN, ReLU, 1x1 conv to `features` channels, 2x2 average pool."""
  features: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(N, H, W, C) -> (N, H // 2, W // 2, features)."""
    x = nn.relu(normalize.batch_norm(train, self.dtype)()(x))
    x = Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=_CONV_INIT)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(Classifier):
  """DenseNet-BC with the ImageNet stem, torchvision's layout.

  Stem: 7x7/2 conv to 2 * growth_rate channels, BN, ReLU, 3x3/2 max-pool; then
  dense blocks joined by transitions that halve the channels (compression 0.5)
  and the resolution; final BN, ReLU, global average pool, dense. With the
  defaults this is DenseNet-121: 7,978,856 parameters for 1000 classes, as
  torchvision's densenet121 (batch-norm scale and bias counted, running
  statistics not), and 7,158,856 for Tiny-ImageNet's 200.

  Why the ImageNet stem on 64x64 Tiny-ImageNet: ME-Net reports "standard
  DenseNet-121 (Huang et al., 2017)" trained with the ImageNet recipe (90 epochs,
  steps at 30 and 60), and this stem is the standard one. It reduces 64x64 to
  16x16 before the first block (2x2 at the last), which keeps the network at about
  0.2 GMACs per image; a CIFAR-style 3x3/1 stem without pooling would cost 16
  times that for the same parameters.

  Attributes:
    num_classes: number of output logits (200 for Tiny-ImageNet).
    block_sizes: dense layers per block.
    growth_rate: channels each dense layer adds.
    bn_size: bottleneck width as a multiple of growth_rate.
    mean, std: per-channel input normalisation (default: ImageNet's).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 200
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4
  mean: normalize.Stats = tiny_imagenet.MEAN
  std: normalize.Stats = tiny_imagenet.STD

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs, e.g. (N, 64, 64, 3); H and W at least 32."""
    norm = normalize.batch_norm(train, self.dtype)
    x = Conv(2 * self.growth_rate, (7, 7), strides=2, padding=3, use_bias=False,
                dtype=self.dtype, kernel_init=_CONV_INIT)(x)
    x = nn.max_pool(nn.relu(norm()(x)), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, layers in enumerate(self.block_sizes):
      for _ in range(layers):
        x = DenseLayer(self.growth_rate, self.bn_size, self.dtype)(x, train=train)
      if i < len(self.block_sizes) - 1:
        x = Transition(x.shape[-1] // 2, self.dtype)(x, train=train)
    x = nn.relu(norm()(x))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE_INIT)(x)
    return logits
