import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import reconstruct
from references import matrices as references


def _cvxpy_objective(x, mask, mu):
  est = references.nuclear_norm_cvxpy(x, mask, mu, eps_abs=1e-9, eps_rel=1e-9, max_iters=200_000)
  return references.nuclear_objective(x, mask, est, mu)


@pytest.mark.parametrize("shape,mu,p", [((12, 20), 1.0, 0.5), ((20, 9), 0.3, 0.7), ((16, 16), 3.0, 0.3)])
def test_objective_within_1e3_of_cvxpy(rng, shape, mu, p):
  xs = rng.uniform(-1, 1, (2,) + shape)
  masks = (rng.random(xs.shape) < p).astype(np.float64)
  with jax.enable_x64(True):
    est = np.asarray(reconstruct.nuclear_norm(jnp.asarray(xs), jnp.asarray(masks), mu=mu))
  for x, mask, e in zip(xs, masks, est):
    ours = references.nuclear_objective(x, mask, e, mu)
    ref = _cvxpy_objective(x, mask, mu)
    assert abs(ours - ref) / ref < 1e-3, (ours, ref)


def test_float32_on_cifar_within_1e3_of_cvxpy(cifar_matrices, rng):
  x = cifar_matrices[:2]
  mask = (rng.random(x.shape) < 0.5).astype(np.float64)
  est = np.asarray(reconstruct.nuclear_norm(jnp.asarray(x, jnp.float32), jnp.asarray(mask)))
  for a, b, e in zip(x, mask, est.astype(np.float64)):
    ours, ref = references.nuclear_objective(a, b, e, 1.0), _cvxpy_objective(a, b, 1.0)
    assert abs(ours - ref) / ref < 1e-3, (ours, ref)


def test_recovers_rank_two(rng):
  m, n = 60, 90
  truth = rng.standard_normal((m, 2)) @ rng.standard_normal((2, n))
  mask = rng.random((m, n)) < 0.6
  with jax.enable_x64(True):
    est = np.asarray(reconstruct.nuclear_norm(jnp.asarray(truth), jnp.asarray(mask), mu=0.1))
  assert np.linalg.norm(est - truth) / np.linalg.norm(truth) < 1e-2


def test_result_does_not_depend_on_the_rest_of_the_batch(rng):
  x = rng.uniform(-1, 1, (5, 10, 14))
  mask = rng.random(x.shape) < 0.5
  with jax.enable_x64(True):
    together = np.asarray(reconstruct.nuclear_norm(jnp.asarray(x), jnp.asarray(mask)))
    alone = [np.asarray(reconstruct.nuclear_norm(jnp.asarray(x[i:i + 1]), jnp.asarray(mask[i:i + 1])))[0]
             for i in (0, 3)]
  np.testing.assert_allclose(together[[0, 3]], np.stack(alone), atol=1e-12)
