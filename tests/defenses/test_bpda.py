import jax
import jax.numpy as jnp
import numpy as np
import pytest

import menet_jax
from menet_jax import bpda


def _nondifferentiable(x, key):
  # Rounding: its true derivative is zero almost everywhere.
  noise = jax.random.uniform(key, x.shape, x.dtype, -0.01, 0.01)
  return jnp.round(x * 4 + noise) / 4


def test_identity_backward_pass(rng):
  x = jnp.asarray(rng.uniform(0, 1, (3, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
  g = bpda(_nondifferentiable)
  key = jax.random.key(0)
  np.testing.assert_array_equal(g(x, key), _nondifferentiable(x, key))
  loss = lambda a: jnp.sum(w * g(a, key))
  np.testing.assert_allclose(jax.grad(loss)(x), w)
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), w)
  assert float(jnp.abs(jax.grad(lambda a: jnp.sum(w * _nondifferentiable(a, key)))(x)).max()) == 0


def test_vmap_with_keys(rng):
  x = jnp.asarray(rng.uniform(0, 1, (4, 6)), jnp.float32)
  keys = jax.random.split(jax.random.key(1), 4)
  g = bpda(_nondifferentiable)
  out = jax.vmap(g)(x, keys)
  np.testing.assert_array_equal(out, jnp.stack([_nondifferentiable(a, k) for a, k in zip(x, keys)]))
  grads = jax.vmap(jax.grad(lambda a, k: jnp.sum(g(a, k) ** 2)))(x, keys)
  np.testing.assert_allclose(grads, 2 * out, rtol=1e-6)


def test_custom_approximation(rng):
  x = jnp.asarray(rng.uniform(0, 1, (5,)), jnp.float32)
  approx = lambda a, key: jnp.tanh(a)
  g = bpda(_nondifferentiable, approx=approx)
  key = jax.random.key(2)
  np.testing.assert_allclose(jax.grad(lambda a: jnp.sum(g(a, key)))(x), 1 - jnp.tanh(x) ** 2, rtol=1e-6)


def test_through_reconstruction(rng):
  images = jnp.asarray(rng.uniform(0, 1, (2, 8, 8, 3)), jnp.float32)
  defended = bpda(lambda a, key: menet_jax.reconstruct_images(key, a, method="usvt", p=0.5))
  w = jnp.asarray(rng.standard_normal(images.shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda a, k: jnp.sum(w * defended(a, k))))(images, jax.random.key(3))
  np.testing.assert_allclose(grad, w)


def test_shape_changing_function_needs_approx():
  g = bpda(lambda x: x[:2])
  with pytest.raises(ValueError, match="shape"):
    jax.grad(lambda a: jnp.sum(g(a)))(jnp.ones(3))


def test_bad_arguments():
  with pytest.raises(ValueError, match="f must be callable"):
    bpda(3)
  with pytest.raises(ValueError, match="approx must be callable"):
    bpda(jnp.sin, approx="identity")
