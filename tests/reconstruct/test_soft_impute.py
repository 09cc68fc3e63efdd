import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import reconstruct
from menet_jax.reconstruct.nuclear_norm import accelerated_svt
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


def _svt(z, tau):
  u, s, vt = np.linalg.svd(z, full_matrices=False)
  return (u * np.maximum(s - tau, 0)) @ vt


def test_accelerated_solver_reaches_the_minimiser_the_fixed_point_approaches(cifar_matrices, rng):
  # Both solvers aim at argmin 0.5 |P(Z - x)|^2 + tau |Z|_* = argmin 2 tau |Z|_* + |P(Z - x)|^2,
  # the release's nuclear-norm problem at mu = 2 tau, whose optimum cvxpy / SCS gives.
  x = cifar_matrices[:2]
  mask = rng.random(x.shape) < 0.5
  taus = np.linalg.svd(np.where(mask, x, 0), compute_uv=False)[:, 0] / 50
  with jax.enable_x64(True):
    fixed = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask)))
    fast = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask),
                                              solver="accelerated"))
    low_rank = np.asarray(accelerated_svt(
        jnp.asarray(x), jnp.asarray(mask), jnp.asarray(taus), max_iters=100, tol=1e-3))
  # Returned as fixed_point's is; tau here is numpy's sigma_max / 50, the solver's its own
  # (equal to rounding, which the iteration carries to about 1e-10).
  np.testing.assert_allclose(fast, np.where(mask, x, low_rank), rtol=0, atol=1e-8)
  for i, tau in enumerate(taus):
    best = references.nuclear_objective(
        x[i], mask[i], references.nuclear_norm_cvxpy(x[i], mask[i], 2 * tau, eps_abs=1e-9,
                                                     eps_rel=1e-9, max_iters=200_000), 2 * tau)
    ours = references.nuclear_objective(x[i], mask[i], low_rank[i], 2 * tau)
    # The fixed point's estimate is the low-rank R = SVT(Z) of its last filled matrix Z.
    theirs = references.nuclear_objective(x[i], mask[i], _svt(fixed[i], tau), 2 * tau)
    assert abs(ours - best) / best < 1e-3, (ours, best)
    assert theirs > ours, (theirs, ours)


def test_unknown_solver_is_refused(rng):
  x = rng.uniform(-1, 1, (1, 4, 4))
  with pytest.raises(ValueError, match="solver must be one of"):
    reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(x > 0), solver="newton")
