import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import reconstruct
from references import matrices as references


@pytest.mark.parametrize("shape,kwargs", [
    ((4, 12, 20), dict()),                       # defaults: sigma_max / 50, 100 iterations, tol 1e-3
    ((3, 18, 10), dict(shrinkage=0.3, tol=1e-2)),  # tall; most matrices stop early
    ((2, 16, 16), dict(max_iters=5)),
])
def test_matches_numpy_per_matrix(rng, shape, kwargs):
  x = rng.uniform(-1, 1, shape)
  mask = rng.random(shape) < 0.6
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask), **kwargs))
  ref = np.stack([references.soft_impute(a, b, **kwargs) for a, b in zip(x, mask)])
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_mixed_stopping_in_one_batch(rng):
  # One matrix converges in a few iterations (nearly fully observed, low rank), the
  # other runs on: each must equal its own per-matrix run.
  low_rank = np.outer(rng.uniform(-1, 1, 14), rng.uniform(-1, 1, 22))
  x = np.stack([low_rank, rng.uniform(-1, 1, (14, 22))])
  mask = np.stack([rng.random((14, 22)) < 0.95, rng.random((14, 22)) < 0.5])
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask), tol=1e-4))
  for i in range(2):
    np.testing.assert_allclose(out[i], references.soft_impute(x[i], mask[i], tol=1e-4), atol=1e-4)


def test_observed_entries_unchanged_and_full_mask_is_identity(rng):
  x = rng.uniform(-1, 1, (3, 10, 12)).astype(np.float32)
  mask = rng.random(x.shape) < 0.5
  mask[2] = True
  out = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask)))
  np.testing.assert_array_equal(out[mask], x[mask])


def test_float32_on_cifar_matches_float64_reference(cifar_matrices, rng):
  x = cifar_matrices[:8]
  mask = rng.random(x.shape) < 0.5
  out = np.asarray(reconstruct.soft_impute(jnp.asarray(x, jnp.float32), jnp.asarray(mask)))
  ref = np.stack([references.soft_impute(a, b) for a, b in zip(x, mask)])
  assert np.max(np.abs(out - ref)) < 5e-4


def test_recovers_rank_two(rng):
  m, n = 60, 90
  truth = rng.standard_normal((m, 2)) @ rng.standard_normal((2, n))
  mask = rng.random((m, n)) < 0.6
  with jax.enable_x64(True):
    est = np.asarray(reconstruct.soft_impute(jnp.asarray(truth), jnp.asarray(mask), shrinkage=0.25,
                                             max_iters=400, tol=1e-6))
  assert np.linalg.norm(est - truth) / np.linalg.norm(truth) < 1e-2
