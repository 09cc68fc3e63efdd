"""The MNIST LeNet of Madry et al. (2018), mnist_challenge/model.py, used by ME-Net for MNIST."""

from __future__ import annotations

import flax.linen as nn
import jax

from menet_jax.data import mnist
from menet_jax.models import normalize
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv

# mnist_challenge draws every weight from a normal truncated at 2 std (std 0.1 before truncation,
# as tf.truncated_normal) and sets every bias to 0.1, so that the ReLUs start active.
_WEIGHT_INIT = nn.initializers.truncated_normal(stddev=0.1)
_BIAS_INIT = nn.initializers.constant(0.1)


class LeNet(Classifier):
  """Two 5x5 conv + max-pool stages and a 1024-unit hidden layer.

  conv 32 5x5 SAME, ReLU, 2x2 max-pool, conv 64 5x5 SAME, ReLU, 2x2 max-pool,
  dense 1024, ReLU, dense num_classes: 3,274,634 parameters on 28x28x1 with 10
  classes. There is no batch norm, so `train` changes nothing and the model has
  no 'batch_stats'.

  Attributes:
    num_classes: number of output logits.
    mean, std: per-channel input normalisation; Madry's model has none (0, 1).
    dtype: compute dtype; parameters stay float32.
  """
  mean: normalize.Stats = mnist.MEAN
  std: normalize.Stats = mnist.STD

  @nn.compact
  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The network on normalised inputs, e.g. (N, 28, 28, 1)."""
    del train
    dense = lambda features: nn.Dense(features, dtype=self.dtype, kernel_init=_WEIGHT_INIT,
                                      bias_init=_BIAS_INIT)
    for features in (32, 64):
      x = Conv(features, (5, 5), padding="SAME", dtype=self.dtype, kernel_init=_WEIGHT_INIT,
                  bias_init=_BIAS_INIT)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
    x = nn.relu(dense(1024)(x.reshape(x.shape[0], -1)))
    return dense(self.num_classes)(x)
