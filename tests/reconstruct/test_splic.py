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


@pytest.mark.parametrize("transpose", [False, True])
def test_subspace_solver_is_algorithm_1_where_the_gram_rank_fits_the_block(rng, transpose):
  # 11 nonzero rows of 20, rank 3: the tracked block has 3 + 8 = 11 columns < 20, so the
  # subspace route runs (not the eigh fallback). Without the TV term the blank rows stay zero
  # at every step (X_r lies in the row span of X), so the Gram matrix has rank <= 11 and the
  # block spans its range exactly: the route must then be Algorithm 1 to float64 rounding.
  x = np.zeros((3, 20, 36))
  x[:, 4:15] = rng.uniform(-1, 1, (3, 11, 36))
  x = np.swapaxes(x, 1, 2) if transpose else x
  mask = rng.random(x.shape) < 0.6
  kwargs = dict(rank=3, lam=0.0, max_outer=6, tol=1e-3)
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.splic(jnp.asarray(x), jnp.asarray(mask), solver="subspace",
                                       **kwargs))
  ref = np.stack([references.splic(a, b, **kwargs) for a, b in zip(x, mask)])
  np.testing.assert_allclose(out, ref, atol=1e-10)


def test_both_solvers_match_numpy_on_cifar_to_rounding(cifar_matrices):
  # Real images against the float64 numpy reference of Algorithm 1 (first 24, p 0.5, rank 8).
  x, mask = cifar_matrices[:24], np.random.default_rng(0).random((24, 32, 96)) < 0.5
  ref = np.stack([references.splic(a, b, rank=8) for a, b in zip(x, mask)])
  rel = lambda out: (np.linalg.norm(np.asarray(out, np.float64) - ref, axis=(1, 2))
                     / np.linalg.norm(ref, axis=(1, 2)))
  # Float32 rounding (u = 2^-24) moves each image by as much as that image amplifies it, which
  # the test measures rather than assumes: sens, the reference's relative change per unit
  # relative change of its input (random signs, 1e-6). An image whose 8th and 9th singular
  # values cross during the run has sens of tens (docs/benchmarks.md: a few in 200 move by
  # 1e-2). Each product of the iteration rounds by at most n u relative (n = 96 terms), and the
  # at most inner x max_outer = 70 iterations add their errors, each amplified by at most sens,
  # at worst linearly: 70 n u max(sens, 1).
  delta = 1e-6
  signs = np.random.default_rng(1).choice([-1.0, 1.0], x.shape)
  moved = np.stack([references.splic(a, b, rank=8) for a, b in zip(x * (1 + delta * signs), mask)])
  sens = np.linalg.norm(moved - ref, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2)) / delta
  rounding = 70 * 96 * 2.0**-24 * np.maximum(sens, 1.0)
  for solver in ("eigh", "subspace"):
    f = lambda a, s=solver: reconstruct.splic(jnp.asarray(a), jnp.asarray(mask), rank=8, solver=s)
    with jax.enable_x64(True):
      exact = rel(f(x))
    # In float64 the eigh route is Algorithm 1 up to rounding (1e-13; 1e-9 bounds it); the
    # subspace route differs by its approximation error, which float32 then adds to.
    assert solver == "subspace" or exact.max() < 1e-9, exact
    assert np.all(rel(f(x.astype(np.float32))) <= exact + rounding), (solver, exact, sens)


def test_subspace_solver_differentiates_as_the_eigh_route(rng):
  x = rng.uniform(-1, 1, (2, 20, 30))
  mask = jnp.asarray(rng.random(x.shape) < 0.6)
  weights = jnp.asarray(rng.standard_normal(x.shape))
  kwargs = dict(rank=3, max_outer=2, inner=3)
  with jax.enable_x64(True):
    grads = [np.asarray(jax.grad(lambda a, s=s: jnp.sum(weights * reconstruct.splic(
        a, mask, solver=s, **kwargs)))(jnp.asarray(x))) for s in ("eigh", "subspace")]
    tangent = jax.jvp(lambda a: reconstruct.splic(a, mask, solver="subspace", **kwargs),
                      (jnp.asarray(x),), (jnp.asarray(x),))
  np.testing.assert_allclose(grads[1], grads[0], atol=1e-12)
  assert np.abs(grads[0]).max() > 0
  # The primal of the JVP is the subspace route's own output.
  with jax.enable_x64(True):
    direct = reconstruct.splic(jnp.asarray(x), mask, solver="subspace", **kwargs)
  np.testing.assert_array_equal(np.asarray(tangent[0]), np.asarray(direct))


def test_subspace_solver_under_jit_and_vmap_with_blank_rows(rng):
  # Blank rows make the Gram matrix rank-deficient, so the power steps' QR sees
  # rank-deficient blocks; the output must stay finite and keep its anchors.
  x = np.zeros((2, 24, 28), np.float32)
  x[:, 4:20, 3:25] = rng.uniform(0, 1, (2, 16, 22))
  mask = rng.random(x.shape) < 0.5
  f = lambda a, b: reconstruct.splic(a, b, rank=4, solver="subspace")
  out = np.asarray(f(jnp.asarray(x), jnp.asarray(mask)))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[mask], x[mask])
  np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(x), jnp.asarray(mask))),
                             out, atol=1e-5)
  grad = jax.grad(lambda a: jnp.sum(f(a, jnp.asarray(mask)) ** 2))(jnp.asarray(x))
  assert bool(jnp.all(jnp.isfinite(grad)))
