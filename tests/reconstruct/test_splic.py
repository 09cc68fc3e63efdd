import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import reconstruct
from references import matrices as references


def _smoothed_rank_by_svd(x, delta):
  """Eq. 3 written with jnp.linalg.svd, differentiated by JAX's own SVD rule."""
  s = jnp.linalg.svd(x, compute_uv=False)
  return s.size - jnp.sum(jnp.exp(-s**2 / (2 * delta**2)))


def _tv_as_printed(x):
  """Eq. 6 term by term: interior pairs, then the last column and the last row."""
  inner = ((x[:-1, :-1] - x[1:, :-1]) ** 2 + (x[:-1, :-1] - x[:-1, 1:]) ** 2) / 2
  last_col = (x[:-1, -1] - x[1:, -1]) ** 2 / 2
  last_row = (x[-1, :-1] - x[-1, 1:]) ** 2 / 2
  return jnp.sum(inner) + jnp.sum(last_col) + jnp.sum(last_row)


@pytest.mark.parametrize("shape,delta", [((8, 12), 3.0), ((12, 7), 0.7), ((10, 10), 10.0)])
def test_eq9_is_the_gradient_of_smoothed_rank(rng, shape, delta):
  x = rng.standard_normal(shape)
  with jax.enable_x64(True):
    ours = np.asarray(reconstruct.smoothed_rank_grad(jnp.asarray(x), delta))
    auto = np.asarray(jax.grad(_smoothed_rank_by_svd)(jnp.asarray(x), delta))
    value = float(reconstruct.smoothed_rank(jnp.asarray(x), delta))
    expected = float(_smoothed_rank_by_svd(jnp.asarray(x), delta))
  np.testing.assert_allclose(ours, auto, atol=1e-10)
  assert value == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (2, 2)])
def test_tv_gradient_is_the_gradient_of_eq6(rng, shape):
  x = rng.standard_normal(shape)
  with jax.enable_x64(True):
    ours = np.asarray(reconstruct.total_variation_grad(jnp.asarray(x)))
    auto = np.asarray(jax.grad(_tv_as_printed)(jnp.asarray(x)))
    value = float(reconstruct.total_variation(jnp.asarray(x)))
    expected = float(_tv_as_printed(jnp.asarray(x)))
  np.testing.assert_allclose(ours, auto, atol=1e-12)
  np.testing.assert_allclose(ours, references.tv_gradient_loops(x), atol=1e-12)
  np.testing.assert_allclose(references.tv_gradient(x), references.tv_gradient_loops(x), atol=1e-12)
  assert value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("delta_fraction", [1.0, 0.25, 0.05])
def test_gradient_steps_lower_objective_at_fixed_delta(rng, delta_fraction):
  # Without truncation (rank = min(m, n)) a round is projected gradient descent on
  # F_delta + lam * C at fixed delta: the objective must fall at every step. (With
  # rank-r truncation it need not: truncating is not a descent step, and at large
  # delta the zero-filled start already minimises F_delta ~ ||X||^2 / (2 delta^2)
  # over the free entries.)
  truth = rng.standard_normal((16, 2)) @ rng.standard_normal((2, 24))
  mask = rng.random(truth.shape) < 0.5
  lam = 0.02
  with jax.enable_x64(True):
    start = jnp.asarray(np.where(mask, truth, 0.0))
    delta = float(np.linalg.svd(start, compute_uv=False)[0]) * delta_fraction

    def objective(a):
      return float(reconstruct.smoothed_rank(a, delta) + lam * reconstruct.total_variation(a))

    values = [objective(start)]
    for steps in (1, 3, 7):
      out = reconstruct.splic(jnp.asarray(truth), jnp.asarray(mask), rank=16, lam=lam, inner=steps,
                              max_outer=1, tol=0.0, delta0=delta)
      values.append(objective(out))
      np.testing.assert_array_equal(np.asarray(out)[mask], truth[mask])
  assert all(b < a for a, b in zip(values, values[1:])), values


def test_anchors_exact_with_truncation(rng):
  x = rng.uniform(-1, 1, (3, 12, 18)).astype(np.float32)
  mask = rng.random(x.shape) < 0.5
  out = np.asarray(reconstruct.splic(jnp.asarray(x), jnp.asarray(mask), rank=3))
  np.testing.assert_array_equal(out[mask], x[mask])
  assert not np.allclose(out[~mask], 0)


def test_matches_numpy_algorithm(rng):
  x = rng.uniform(-1, 1, (3, 10, 14))
  mask = rng.random(x.shape) < 0.5
  kwargs = dict(rank=3, lam=0.02, max_outer=6, tol=1e-3)
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.splic(jnp.asarray(x), jnp.asarray(mask), **kwargs))
  ref = np.stack([references.splic(a, b, **kwargs) for a, b in zip(x, mask)])
  np.testing.assert_allclose(out, ref, atol=1e-8)


def test_completes_low_rank_matrix(rng):
  truth = rng.standard_normal((20, 2)) @ rng.standard_normal((2, 30))
  mask = rng.random(truth.shape) < 0.6
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.splic(jnp.asarray(truth), jnp.asarray(mask), rank=2, lam=0.0,
                                       max_outer=30, tol=1e-8))
  zero_filled = np.where(mask, truth, 0)
  assert np.linalg.norm(out - truth) < 0.1 * np.linalg.norm(zero_filled - truth)


def test_alternating_swaps_anchors(rng):
  x = rng.uniform(-1, 1, (2, 12, 12))
  mask = rng.random(x.shape) < 0.5
  kwargs = dict(rank=3, max_outer=3)
  with jax.enable_x64(True):
    first = np.asarray(reconstruct.splic(jnp.asarray(x), jnp.asarray(mask), **kwargs))
    both = np.asarray(reconstruct.splic_alternating(jnp.asarray(x), jnp.asarray(mask), **kwargs))
  # The second pass keeps the first pass's estimates fixed and re-estimates the original anchors.
  np.testing.assert_array_equal(both[~mask], first[~mask])
  assert not np.allclose(both[mask], x[mask])
