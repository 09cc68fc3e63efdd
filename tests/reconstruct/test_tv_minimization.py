"""Guo et al.'s TV minimization against cvxpy (Clarabel) on the same objective, stated directly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import defenses, reconstruct
from menet_jax.reconstruct import masks
from references import matrices as references


@pytest.mark.parametrize("shape,weight,norm,p", [
    ((8, 11), 0.05, 2, 0.5), ((10, 7), 0.3, 2, 0.3), ((9, 9), 0.1, 1, 0.6), ((6, 12), 0.02, 1, 0.8)])
def test_reaches_the_cvxpy_optimum(rng, shape, weight, norm, p):
  x = rng.uniform(-1, 1, (2,) + shape)
  mask = rng.random(x.shape) < p
  with jax.enable_x64(True):
    # Run to convergence: the iteration has no other error than its distance to the optimum.
    z = np.asarray(reconstruct.tv_minimization(jnp.asarray(x), jnp.asarray(mask), weight=weight,
                                               norm=norm, max_iters=40_000, tol=1e-12))
  for a, b, e in zip(x, mask, z):
    f = references.tv_objective(a, b, e, weight, norm)
    _, ref = references.tv_minimization_cvxpy(a, b, weight, norm)
    # Clarabel's own optimum is accurate to ~1e-8 relative; ours may not go below it.
    assert abs(f - ref) <= 1e-6 * ref, (f, ref)


def test_all_kept_is_strongly_convex_so_the_minimiser_itself_matches(rng):
  # With every entry kept, F is 1-strongly convex: ||z - z*||^2 <= 2 (F(z) - F*).
  x = rng.uniform(-1, 1, (9, 10))
  mask = np.ones(x.shape, bool)
  with jax.enable_x64(True):
    z = np.asarray(reconstruct.tv_minimization(jnp.asarray(x), jnp.asarray(mask), weight=0.2,
                                       max_iters=40_000, tol=1e-12))
  ref, _ = references.tv_minimization_cvxpy(x, mask, 0.2)
  assert np.abs(z - ref).max() < 1e-3
  assert np.abs(z - x).max() > 0.05  # the TV term did smooth the image


def test_defaults_in_float32_on_cifar_within_1e3_of_cvxpy(cifar_matrices, rng):
  # One channel plane of each image, as the separate layout hands them over.
  x = cifar_matrices[:2, :, :32]
  mask = rng.random(x.shape) < 0.5
  z = np.asarray(reconstruct.tv_minimization(jnp.asarray(x, jnp.float32), jnp.asarray(mask)))
  for a, b, e in zip(x, mask, z.astype(np.float64)):
    f = references.tv_objective(a, b, e, 0.03)
    _, ref = references.tv_minimization_cvxpy(a, b, 0.03)
    assert abs(f - ref) / ref < 1e-3, (f, ref)


def test_a_large_weight_gives_the_mean_of_the_kept_entries(rng):
  # For a large enough weight the minimiser is flat, and the flat z minimising the fit is the
  # kept entries' mean.
  x = rng.uniform(-1, 1, (3, 8, 8))
  mask = rng.random(x.shape) < 0.5
  with jax.enable_x64(True):
    z = np.asarray(reconstruct.tv_minimization(jnp.asarray(x), jnp.asarray(mask), weight=100.0,
                                       max_iters=20_000, tol=1e-12))
  for a, b, e in zip(x, mask, z):
    np.testing.assert_allclose(e, np.full(a.shape, a[b].mean()), atol=1e-6)


def test_bad_parameters_name_the_argument():
  x, mask = jnp.zeros((4, 4)), jnp.ones((4, 4), bool)
  for kw, msg in [(dict(weight=0.0), "weight"), (dict(norm=3), "norm must be one of"),
                  (dict(max_iters=0), "max_iters"), (dict(tol=-1.0), "tol")]:
    with pytest.raises(ValueError, match=msg):
      reconstruct.tv_minimization(x, mask, **kw)
  with pytest.raises(ValueError, match="at least 2 x 2"):
    reconstruct.tv_minimization(jnp.zeros((1, 5)), jnp.ones((1, 5), bool))


def test_defense_reconstructs_each_channel_from_its_shared_mask(rng):
  d = defenses.create("tv_minimization(startp=0.4, endp=0.6, mask_num=2)")
  assert (d.method, d.layout, d.randomized) == ("tv_minimization", "separate", True)
  assert d.test_level == pytest.approx(0.45)
  x = rng.uniform(0, 1, (2, 6, 7, 3))
  keys = jax.random.split(jax.random.key(0), 2)
  with jax.enable_x64(True):
    out = np.asarray(jax.jit(d.transform)(keys, jnp.asarray(x), jnp.full(2, 0.5)))
  for i in range(2):
    mask = np.asarray(masks.image_mask(keys[i], (1, 6, 7, 3), 0.5, "separate")[0, 0])
    for c in range(3):
      a = 2 * x[i, ..., c] - 1
      _, ref = references.tv_minimization_cvxpy(a, mask, 0.03)
      # The minimiser need not be unique off the kept entries, so compare objectives. Clipping
      # to [-1, 1] cannot raise it (the data lie in [-1, 1]). The defense stops at tol 1e-4; a
      # wrong mask, channel or scale misses by far more than 1e-3.
      f = references.tv_objective(a, mask, 2 * out[i, ..., c] - 1, 0.03)
      assert abs(f - ref) <= 1e-3 * ref, (i, c, f, ref)
  with pytest.raises(ValueError, match="fixes layout"):
    defenses.create("tv_minimization(layout=concat)")
  assert "tv_minimization" in reconstruct.names()
