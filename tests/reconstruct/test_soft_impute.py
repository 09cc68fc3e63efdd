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
  x = cifar_matrices[:3]
  mask = rng.random(x.shape) < 0.5
  sigma_max = np.linalg.svd(np.where(mask, x, 0), compute_uv=False)[:, 0]
  taus = sigma_max / 50
  with jax.enable_x64(True):
    fixed = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask)))
    fast = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask),
                                              solver="accelerated"))
    # The same iteration through the public solver: continuation from sigma_max / 2.
    low_rank = np.asarray(accelerated_svt(
        jnp.asarray(x), jnp.asarray(mask), jnp.asarray(taus), max_iters=100, tol=1e-5,
        stop="objective", start=jnp.asarray(sigma_max / 2), factor=0.7))
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


@pytest.mark.parametrize("stop,start", [("step", None), ("step", 3.0), ("objective", None),
                                        ("objective", 3.0)])
def test_every_stop_and_continuation_reaches_the_cvxpy_optimum(rng, stop, start):
  # A tall 20 x 12 and a wide 12 x 20 matrix, half observed; tight tolerances, so that the
  # continuation's path and either rule end at the same minimiser.
  xs = [rng.uniform(-1, 1, (20, 12)), rng.uniform(-1, 1, (12, 20))]
  for x in xs:
    mask = rng.random(x.shape) < 0.5
    tau = 0.2
    with jax.enable_x64(True):
      est = np.asarray(accelerated_svt(
          jnp.asarray(x[None]), jnp.asarray(mask[None]), jnp.asarray([tau]), max_iters=2000,
          tol=1e-9 if stop == "objective" else 1e-6, stop=stop,
          start=None if start is None else jnp.asarray([start])))[0]
    best = references.nuclear_objective(
        x, mask, references.nuclear_norm_cvxpy(x, mask, 2 * tau, eps_abs=1e-9, eps_rel=1e-9,
                                               max_iters=200_000), 2 * tau)
    ours = references.nuclear_objective(x, mask, est, 2 * tau)
    assert abs(ours - best) / best < 1e-5, (ours, best)


def test_accelerated_stops_below_the_fixed_point_objective_on_cifar_float32(cifar_matrices, rng):
  # What the default tolerance is for: on CIFAR-10 matrices at p = 0.5 and 0.8 the float32
  # accelerated solver ends at a lower objective than the float64 fixed point (numpy loop).
  x = cifar_matrices[:6]
  for p in (0.5, 0.8):
    mask = rng.random(x.shape) < p
    out = np.asarray(reconstruct.soft_impute(jnp.asarray(x, jnp.float32), jnp.asarray(mask),
                                             solver="accelerated"), np.float64)
    for i in range(len(x)):
      tau = np.linalg.svd(np.where(mask[i], x[i], 0), compute_uv=False)[0] / 50
      ref = references.soft_impute(x[i], mask[i])
      # Each output's low-rank estimate is SVT(output) (the filled matrix thresholded once more).
      ours = references.nuclear_objective(x[i], mask[i], _svt(out[i], tau), 2 * tau)
      theirs = references.nuclear_objective(x[i], mask[i], _svt(ref, tau), 2 * tau)
      assert ours <= theirs, (p, i, ours, theirs)


def test_accelerated_with_a_shrinkage_above_the_continuation_start(rng):
  # shrinkage >= sigma_max / 2: the first step (shared with sigma_max's decomposition) is
  # already at the final threshold; the result is still the cvxpy minimiser.
  x = rng.uniform(-1, 1, (2, 12, 20))
  mask = rng.random(x.shape) < 0.5
  sigma_max = np.linalg.svd(np.where(mask, x, 0), compute_uv=False)[:, 0]
  shrinkage = float(0.6 * sigma_max.min())
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(mask), shrinkage=shrinkage,
                                             solver="accelerated", tol=1e-10, max_iters=2000))
  for i in range(2):
    best = references.nuclear_objective(
        x[i], mask[i], references.nuclear_norm_cvxpy(x[i], mask[i], 2 * shrinkage, eps_abs=1e-9,
                                                     eps_rel=1e-9, max_iters=200_000), 2 * shrinkage)
    ours = references.nuclear_objective(x[i], mask[i], _svt(out[i], shrinkage), 2 * shrinkage)
    assert abs(ours - best) / best < 1e-5, (ours, best)


def test_bad_solver_options_are_refused(rng):
  x = jnp.asarray(rng.uniform(-1, 1, (1, 4, 4)))
  args = (x, x > 0, jnp.ones(1))
  with pytest.raises(ValueError, match="stop must be one of"):
    accelerated_svt(*args, max_iters=5, tol=1e-3, stop="gap")
  with pytest.raises(ValueError, match=r"factor must be in \(0.0, 1.0\)"):
    accelerated_svt(*args, max_iters=5, tol=1e-3, factor=1.0)


def test_unknown_solver_is_refused(rng):
  x = rng.uniform(-1, 1, (1, 4, 4))
  with pytest.raises(ValueError, match="solver must be one of"):
    reconstruct.soft_impute(jnp.asarray(x), jnp.asarray(x > 0), solver="newton")
