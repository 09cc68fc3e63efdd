"""Embedding classifiers C(Q(x)) of the ER-Classifier, and the critic D that regularises Q.

An `EmbeddingClassifier` maps an image to a low-dimensional code z = Q(x) (the
encoder) and the code to logits C(z) (the head). At inference it is an ordinary
deterministic classifier (`apply(variables, x, train=False)`); the objectives
that train it (`training.objectives.embedding`) also call `encode` and `classify`
(as `apply(..., method="encode")`) and train a `Critic` on the codes. The
architectures are those of the notes (shared/specs/ER-Classifier.md, section 1.6,
after the paper's Figs. 8-10); parameter counts at the paper's widths, PyTorch's
counting (batch norm: scale and bias):

  encoder "wae" (MNIST, k = 4): 4 x 4 stride-2 convolutions without bias,
      1 -> h (ReLU), h -> 2h -> 4h -> 8h (batch norm, ReLU): 28 -> 14 -> 7 -> 3 -> 1,
      then dense 8h -> k; h = 128: 11,019,780 parameters.
  encoder "wae_stl10" (k = 16): the same with 3 -> h -> ... -> 16h on 96 -> 3, then a
      3 x 3 stride-2 VALID convolution 16h -> 16h (batch norm, ReLU) to 1 x 1, dense 16h -> k.
  encoder "vgg19" (CIFAR-10, k = 16): VGG19's convolutions without batch norm
      (models.vgg, first stage h = 64) to 1 x 1 x 8h, dense 8h -> k: 20,032,592.
  encoder "vgg16_bn" (Tiny-ImageNet, k = 20): VGG16-BN's convolutions, global average
      pool, dense 8h -> k.
  encoder "small_cnn" (not the paper's; CPU-scale CIFAR-10, k = 16): models.small_cnn's
      stages h -> 2h -> 4h (3 x 3 convolutions, batch norm, ReLU, 2 x 2 max-pool), dense
      16 (4h) -> k; h = 16: 40,096 parameters on 32 x 32 x 3.
  head "bn_mlp" (MNIST, STL-10): dense k -> 500, batch norm, ReLU, dense 500 -> 256,
      batch norm, ReLU, dense 256 -> classes: 134,838 at k = 4.
  head "dropout_mlp" (CIFAR-10): dense k -> 512, dropout, dense 512 -> 512, ReLU,
      dropout, dense 512 -> 512, ReLU, dense 512 -> classes (no ReLU after the first
      dense, as in the paper; 10 outputs, not its 16): 539,146 at k = 16.
  head "wide_mlp" (Tiny-ImageNet): dense k -> 4096, ReLU, dropout, dense 4096 -> 4096,
      ReLU, dropout, dense 4096 -> classes.
  critic: dense k -> 512, ReLU, three times dense 512 -> 512, ReLU, dense 512 -> 1,
      then log-sigmoid (WGAN with clipping), or no output map (a logit: the JS game,
      WGAN-GP): 791,041 at k = 4.

Dropout (rate 0.5, PyTorch's default) needs a "dropout" PRNG stream in training.
With `variational` the encoder has two dense outputs, the mean and the log-variance
of a Gaussian code (VAE-CLA); the classifier's inference path uses the mean.
Initialisation is PyTorch's default scale for every kernel (`DENSE_INIT`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from menet_jax.models import normalize, small_cnn, vgg
from menet_jax.models.classifier import Classifier
from menet_jax.models.conv import Conv
from menet_jax.models.resnet import DENSE_INIT

# Each encoder's paper setting: (width, code dimension k).
ENCODERS = {"wae": (128, 4), "wae_stl10": (128, 16), "vgg19": (64, 16), "vgg16_bn": (64, 20),
            # Not the paper's: small_cnn's stages (width, 2 width, 4 width) for CPU-scale runs.
            "small_cnn": (16, 16)}
HEADS = ("bn_mlp", "dropout_mlp", "wide_mlp")
DROPOUT = 0.5


class Encoder(nn.Module):
  """x (N, H, W, C) normalised -> code (N, k), or (mean, log-variance) if `variational`."""
  kind: str
  width: int
  code_dim: int
  variational: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | tuple[jax.Array, jax.Array]:
    bn = normalize.batch_norm(train, self.dtype)
    if self.kind in ("wae", "wae_stl10"):
      stages = 4 if self.kind == "wae" else 5
      for i in range(stages):
        x = Conv(self.width * 2 ** i, (4, 4), strides=2, padding=1, use_bias=False,
                    dtype=self.dtype, kernel_init=DENSE_INIT)(x)
        x = nn.relu(bn()(x) if i else x)
      if self.kind == "wae_stl10":
        x = Conv(x.shape[-1], (3, 3), strides=2, padding="VALID", use_bias=False,
                    dtype=self.dtype, kernel_init=DENSE_INIT)(x)
        x = nn.relu(bn()(x))
    elif self.kind == "vgg19":
      x = vgg.features(x, vgg.LAYOUTS["vgg19"], width=self.width, batch_norm=False, train=train,
                       dtype=self.dtype)
    elif self.kind == "vgg16_bn":
      x = vgg.features(x, vgg.LAYOUTS["vgg16"], width=self.width, batch_norm=True, train=train,
                       dtype=self.dtype)
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    elif self.kind == "small_cnn":
      x = small_cnn.features(x, (self.width, 2 * self.width, 4 * self.width), train=train,
                             dtype=self.dtype)
    else:
      raise ValueError(f"encoder must be one of {tuple(ENCODERS)}, got {self.kind!r}")
    x = x.reshape(x.shape[0], -1)
    dense = lambda name: nn.Dense(self.code_dim, dtype=self.dtype, kernel_init=DENSE_INIT,
                                  name=name)(x)
    if self.variational:
      return dense("mean"), dense("log_variance")
    return dense("code")


class Head(nn.Module):
  """code (N, k) -> logits (N, num_classes)."""
  kind: str
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    dense = lambda n: nn.Dense(n, dtype=self.dtype, kernel_init=DENSE_INIT)
    drop = lambda h: nn.Dropout(DROPOUT, deterministic=not train)(h)
    if self.kind == "bn_mlp":
      for n in (500, 256):
        z = nn.relu(normalize.batch_norm(train, self.dtype)()(dense(n)(z)))
    elif self.kind == "dropout_mlp":
      z = drop(dense(512)(z))
      z = drop(nn.relu(dense(512)(z)))
      z = nn.relu(dense(512)(z))
    elif self.kind == "wide_mlp":
      for _ in range(2):
        z = drop(nn.relu(dense(4096)(z)))
    else:
      raise ValueError(f"head must be one of {HEADS}, got {self.kind!r}")
    return dense(self.num_classes)(z)


class EmbeddingClassifier(Classifier):
  """logits = C(Q(x)): an `Encoder` into R^code_dim and a `Head`.

  Attributes:
    encoder, head: kinds of `ENCODERS` and `HEADS`.
    width: channels of the encoder's first stage; None: the paper's (128 for "wae" and
      "wae_stl10", 64 for the VGGs). CPU runs use fewer and say so.
    code_dim: k, the dimension of the code; None: the paper's (`ENCODERS`).
    variational: the encoder outputs a Gaussian's mean and log-variance (VAE-CLA);
      the logits are those of the mean.
  """
  encoder: str = "wae"
  head: str = "bn_mlp"
  width: int | None = None
  code_dim: int | None = None
  variational: bool = False

  def setup(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"encoder must be one of {tuple(ENCODERS)}, got {self.encoder!r}")
    width, code_dim = ENCODERS[self.encoder]
    self.q = Encoder(self.encoder, self.width or width, self.code_dim or code_dim,
                     self.variational, self.dtype)
    self.c = Head(self.head, self.num_classes, self.dtype)

  def encode(self, x: jax.Array, *, train: bool) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Q(x) for pixel images x (N, H, W, C) in [0, 1]: (N, k) float32 (float64 for a float64
    model, `normalize.wide_dtype`), or (mean, log-variance)."""
    code = self.q(normalize.normalize(x, self.mean, self.std).astype(self.dtype), train=train)
    return jax.tree.map(lambda a: a.astype(normalize.wide_dtype(self.dtype)), code)

  def classify(self, z: jax.Array, *, train: bool) -> jax.Array:
    """C(z): logits (N, num_classes) float32 (float64 for a float64 model) of codes z (N, k)."""
    return self.c(z.astype(self.dtype), train=train).astype(normalize.wide_dtype(self.dtype))

  def logits(self, x: jax.Array, *, train: bool) -> jax.Array:
    code = self.q(x, train=train)
    return self.c(code[0] if self.variational else code, train=train)


class Critic(nn.Module):
  """D: codes (N, k) -> (N,) scores; `output` "log_sigmoid" (WGAN with clipping, D <= 0) or
  "logit" (no output map)."""
  output: str = "log_sigmoid"
  hidden: int = 512
  depth: int = 4

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    for _ in range(self.depth):
      z = nn.relu(nn.Dense(self.hidden, kernel_init=DENSE_INIT)(z))
    score = nn.Dense(1, kernel_init=DENSE_INIT)(z)[:, 0]
    return jax.nn.log_sigmoid(score) if self.output == "log_sigmoid" else score
