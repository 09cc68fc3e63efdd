"""The ER-Classifier's networks (models.embedding) and the VGG baseline: parameter counts
written from the architectures (shared/specs/ER-Classifier.md 1.6), shapes, batch independence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import models
from menet_jax.models.embedding import Critic

RAW = dict(mean=(0.0,), std=(1.0,))


def _params(model, shape, method=None):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False))
  return {name: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
          for name, tree in variables["params"].items()}


def _wae_mnist(h, k=4):  # 4x4 convolutions without bias; batch norm (scale, bias) on all but the first
  convs = 16 * 1 * h + 16 * h * 2 * h + 16 * 2 * h * 4 * h + 16 * 4 * h * 8 * h
  return convs + 2 * (2 * h + 4 * h + 8 * h) + 8 * h * k + k


def _vgg19_convs(h, c_in=3, batch_norm=False):
  total = 0
  for c in [h] * 2 + [2 * h] * 2 + [4 * h] * 4 + [8 * h] * 8:
    total += 9 * c_in * c + c + (2 * c if batch_norm else 0)
    c_in = c
  return total


@pytest.mark.parametrize("name,shape,h,encoder,head", [
    ("er_mnist", (1, 28, 28, 1), None, 11_019_780, 134_838),  # the notes' numbers
    ("er_mnist", (1, 28, 28, 1), 32, 690_564, 134_838),
    ("er_cifar10", (1, 32, 32, 3), None, 20_032_592, 539_146),
])
def test_paper_parameter_counts(name, shape, h, encoder, head):
  model = models.create(name if h is None else f"{name}(width={h})", num_classes=10, **RAW)
  counts = _params(model, shape)
  assert counts == {"q": encoder, "c": head}
  if name == "er_mnist":
    assert encoder == _wae_mnist(h or 128)  # 28 -> 14 -> 7 -> 3 -> 1: the code layer sees 8h
  else:
    assert encoder == _vgg19_convs(64) + 512 * 16 + 16


def test_other_encoders_heads_and_the_baseline_count_as_written():
  h = 8
  stl = _params(models.create(f"er_stl10(width={h})", num_classes=10, **RAW), (1, 96, 96, 3))
  convs = 16 * 3 * h + sum(16 * h * 2 ** i * h * 2 ** (i + 1) + 2 * h * 2 ** (i + 1)
                           for i in range(4))
  assert stl["q"] == convs + 9 * (16 * h) ** 2 + 2 * 16 * h + 16 * h * 16 + 16
  assert stl["c"] == (16 * 500 + 500) + 1000 + (500 * 256 + 256) + 512 + 2570
  tiny = _params(models.create(f"er_tiny_imagenet(width={h})", num_classes=200, **RAW),
                 (1, 64, 64, 3))
  vgg16 = 0
  c_in = 3
  for c in [h] * 2 + [2 * h] * 2 + [4 * h] * 3 + [8 * h] * 6:
    vgg16 += 9 * c_in * c + 3 * c
    c_in = c
  assert tiny == {"q": vgg16 + 8 * h * 20 + 20,
                  "c": (20 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 200 + 200)}
  small = _params(models.create(f"er_cifar10_small(width={h})", num_classes=10,
                                **RAW), (1, 32, 32, 3))
  convs = sum(9 * a * b + 2 * b for a, b in ((3, h), (h, 2 * h), (2 * h, 4 * h)))
  assert small["q"] == convs + 16 * 4 * h * 16 + 16  # 4 x 4 maps after three pools
  vgg = _params(models.create("vgg19_bn", num_classes=10), (1, 32, 32, 3))
  assert sum(vgg.values()) == _vgg19_convs(64, batch_norm=True) + 512 * 10 + 10 == 20_040_522


@pytest.mark.parametrize("k,count", [(4, 791_041), (16, 797_185), (20, 799_233)])
def test_critic_parameter_counts(k, count):
  variables = jax.eval_shape(lambda: Critic().init(jax.random.key(0), jnp.zeros((1, k))))
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(variables)) == count
  assert count == k * 512 + 512 + 3 * (512 * 512 + 512) + 513


def test_log_sigmoid_critic_is_non_positive_and_codes_have_the_right_shapes():
  model = models.create("er_mnist(width=8)", num_classes=10, **RAW)
  x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  z = model.apply(variables, x, train=False, method="encode")
  assert z.shape == (5, 4)
  np.testing.assert_allclose(model.apply(variables, z, train=False, method="classify"),
                             model.apply(variables, x, train=False), rtol=1e-6, atol=1e-6)
  critic = Critic()
  gamma = critic.init(jax.random.key(2), z)
  assert critic.apply(gamma, z).shape == (5,) and np.all(np.asarray(critic.apply(gamma, z)) <= 0)
  vae = models.create("er_mnist(width=8, variational=True)", num_classes=10, **RAW)
  v = vae.init(jax.random.key(0), x, train=False)
  mean, log_var = vae.apply(v, x, train=False, method="encode")
  assert mean.shape == log_var.shape == (5, 4)
  np.testing.assert_allclose(vae.apply(v, mean, train=False, method="classify"),
                             vae.apply(v, x, train=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,shape", [("er_mnist(width=8)", (6, 28, 28, 1)),
                                        ("er_cifar10_small(width=4)", (6, 32, 32, 3))])
def test_eval_output_of_an_image_does_not_depend_on_its_batch(name, shape):
  model = models.create(name, num_classes=10, **RAW)
  x = jax.random.uniform(jax.random.key(1), shape)
  variables = model.init(jax.random.key(0), x, train=False)
  # Non-trivial running statistics, so that eval mode is tested, not the initial ones.
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(3)})
  variables = {"params": variables["params"], **updates}
  batch = np.asarray(model.apply(variables, x, train=False))
  for i in range(len(x)):
    alone = np.asarray(model.apply(variables, x[i:i + 1], train=False))
    np.testing.assert_allclose(batch[i:i + 1], alone, rtol=1e-5, atol=1e-5)
