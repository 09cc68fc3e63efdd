"""VGG (Simonyan and Zisserman, 2015) for 32 x 32 inputs: the ER-Classifier's CIFAR-10 baseline.

Stacks of 3 x 3 convolutions (padding 1, bias, ReLU; batch norm before the ReLU
in the -BN variants) separated by 2 x 2 max-pools, as torchvision's `make_layers`,
then one dense layer on the flattened 1 x 1 x 512 map (the CIFAR form, as
kuangliu/pytorch-cifar): VGG19-BN has 20,040,522 parameters on 32 x 32 x 3.
`width` scales every stage's channels (64 is the paper's; CPU runs use fewer).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv
from menet_jax.models.resnet import DENSE_INIT
from menet_jax.models.small_cnn import max_pool_2x2

# Channels per convolution in units of the first stage's, "M" a 2 x 2 max-pool.
LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    "vgg19": (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"),
}


def features(x: jax.Array, layout: Sequence[int | str], *, width: int, batch_norm: bool,
             train: bool, dtype) -> jax.Array:
  """The convolutional part, to be called inside a compact module.

  Args:
    x: (N, H, W, C) normalised images; each "M" halves H and W (odd rows dropped).
    layout: a `LAYOUTS` entry.
    width: channels of the first stage (64 in VGG).

  Returns:
    (N, H / 32, W / 32, 8 width) for the 5-pool layouts.
  """
  for entry in layout:
    if entry == "M":
      x = max_pool_2x2(x)
      continue
    x = Conv(entry * width, (3, 3), padding=1, dtype=dtype, kernel_init=DENSE_INIT)(x)
    if batch_norm:
      x = normalize.batch_norm(train, dtype)()(x)
    x = nn.relu(x)
  return x


class VGG(Classifier):
  """VGG on 32 x 32 images: `features`, flatten, one dense layer to the logits.

  Attributes:
    layout: "vgg16" or "vgg19".
    width: channels of the first stage (64: the paper's network).
    batch_norm: the -BN variant.
  """
  layout: str = "vgg19"
  width: int = 64
  batch_norm: bool = True

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs (N, 32, 32, C)."""
    x = features(x, LAYOUTS[self.layout], width=self.width, batch_norm=self.batch_norm,
                 train=train, dtype=self.dtype)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE_INIT)(x)
