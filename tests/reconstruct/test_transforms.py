"""Every reconstructor runs under jit, vmap and grad; gradients agree with finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import reconstruct

PARAMS = {
    "usvt": dict(keep=0.5),
    "soft_impute": dict(max_iters=20),
    "nuclear_norm": dict(max_iters=30),
    "splic": dict(rank=3, max_outer=2),
    "splic_alternating": dict(rank=3, max_outer=2),
    "tv_minimization": dict(max_iters=30),
}


def test_every_registered_method_is_covered():
  assert set(reconstruct.names()) == set(PARAMS)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 3, 8, 12)).astype(np.float32)  # two leading batch dims
  mask = rng.random(x.shape) < 0.6
  return jnp.asarray(x), jnp.asarray(mask)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_jit_vmap_grad(problem, name):
  x, mask = problem
  f = reconstruct.get(name)
  kw = PARAMS[name]
  out = f(x, mask, **kw)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_allclose(jax.jit(lambda a, b: f(a, b, **kw))(x, mask), out, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda a, b: f(a, b, **kw))(x, mask), out, atol=1e-5)
  grad = jax.grad(lambda a: jnp.sum(jnp.sin(f(a, mask, **kw))))(x)
  assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.max(jnp.abs(grad))) > 0


@pytest.mark.parametrize("name,kw", [
    ("usvt", dict(keep=0.5)),
    ("soft_impute", dict(max_iters=4, tol=0.0)),
    ("nuclear_norm", dict(max_iters=6, tol=0.0)),
    ("splic", dict(rank=3, inner=3, max_outer=2, tol=0.0)),
    ("tv_minimization", dict(weight=0.1, max_iters=8, tol=0.0)),
])
def test_gradient_matches_finite_differences(name, kw):
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (7, 10))
  mask = rng.random(x.shape) < 0.7
  weights = rng.standard_normal(x.shape)
  direction = rng.standard_normal(x.shape)
  f = reconstruct.get(name)
  with jax.enable_x64(True):
    loss = lambda a: jnp.sum(jnp.asarray(weights) * f(a, jnp.asarray(mask), **kw))
    grad = np.asarray(jax.grad(loss)(jnp.asarray(x)))
    h = 1e-6
    fd = (float(loss(jnp.asarray(x + h * direction))) - float(loss(jnp.asarray(x - h * direction)))) / (2 * h)
  assert np.sum(grad * direction) == pytest.approx(fd, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_gradient_finite_at_repeated_singular_values(name):
  # Blank rows (MNIST borders) make the Gram matrix singular with repeated zero
  # eigenvalues, where differentiating an eigendecomposition directly gives NaN.
  x = np.zeros((10, 14), np.float32)
  x[3:7, 2:12] = np.random.default_rng(3).uniform(0, 1, (4, 10))
  mask = np.ones_like(x, bool)
  mask[::3, ::2] = False
  f = reconstruct.get(name)
  grad = jax.grad(lambda a: jnp.sum(f(a, jnp.asarray(mask), **PARAMS[name]) ** 2))(jnp.asarray(x))
  assert bool(jnp.all(jnp.isfinite(grad)))
