"""The MNIST classifier of RIDE's Table 2: the PyTorch-examples CNN (notes, shared/specs/RIDE.md).

conv 1->20 5x5 VALID, ReLU, 2x2 max-pool; conv 20->50 5x5 VALID, ReLU, 2x2
max-pool; dense 800->500, ReLU; dense 500->10: 431,080 parameters on 28x28x1.
It normalises with the MNIST statistics the example uses (mean 0.1307, std 0.3081),
not with the raw pixels of Madry's LeNet.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv


class RIDEMnistCNN(Classifier):
  """The PyTorch-examples MNIST CNN (no batch norm, so `train` changes nothing)."""
  mean: normalize.Stats = normalize.NORMALIZATION["mnist_examples"][0]
  std: normalize.Stats = normalize.NORMALIZATION["mnist_examples"][1]

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs, e.g. (N, 28, 28, 1)."""
    del train
    for features in (20, 50):
      x = Conv(features, (5, 5), padding="VALID", dtype=self.dtype)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(500, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
