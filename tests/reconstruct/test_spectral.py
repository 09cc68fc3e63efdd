"""spectral.eigh: values and derivatives against numpy and jnp.linalg.eigh, under jit / vmap / grad."""

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.reconstruct import spectral


def _symmetric(rng, shape):
  a = rng.standard_normal(shape)
  return a + np.swapaxes(a, -1, -2)


def test_matches_numpy(rng):
  g = _symmetric(rng, (2, 3, 6, 6))
  with jax.enable_x64(True):
    lam, q = jax.jit(spectral.eigh)(jnp.asarray(g))
  lam_ref, q_ref = np.linalg.eigh(g)
  np.testing.assert_allclose(lam, lam_ref, atol=1e-12)
  # Eigenvectors up to sign: compare the rank-one projectors.
  proj = lambda v: v[..., :, None, :] * v[..., None, :, :]
  np.testing.assert_allclose(proj(np.asarray(q)), proj(q_ref), atol=1e-10)


def test_derivatives_match_jnp_linalg_eigh(rng):
  g = jnp.asarray(_symmetric(rng, (3, 5, 5)))
  dg = jnp.asarray(rng.standard_normal((3, 5, 5)))  # not symmetric: both symmetrise it
  with jax.enable_x64(True):
    g, dg = g.astype(jnp.float64), dg.astype(jnp.float64)
    (lam, q), (dlam, dq) = jax.jvp(spectral.eigh, (g,), (dg,))
    (lam_r, q_r), (dlam_r, dq_r) = jax.jvp(jnp.linalg.eigh, (g,), (dg,))
    np.testing.assert_allclose(dlam, dlam_r, atol=1e-10)
    # dQ depends on the sign convention of Q: compare Q^T dQ after aligning signs.
    signs = jnp.sign(jnp.sum(q * q_r, axis=-2, keepdims=True))
    np.testing.assert_allclose(dq * signs, dq_r, atol=1e-9)
    # Reverse mode (the tangent map is linear, so it transposes), also under vmap.
    weights = jnp.arange(5.0)
    loss = lambda m: jnp.sum(spectral.eigh(m)[0] * weights)
    ref = lambda m: jnp.sum(jnp.linalg.eigh(m)[0] * weights)
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(g), jax.vmap(jax.grad(ref))(g), atol=1e-10)


def test_filter_matrices_and_spectrum_against_numpy_svd(rng):
  # The spectrum that comes with a filter's output is sigma^2 of x, for wide and tall x, and
  # its derivative is d(sigma_i^2) = 2 sigma_i u_i^T dx v_i (distinct singular values).
  for shape in ((2, 4, 7), (2, 7, 4)):
    x = rng.standard_normal(shape)
    dx = rng.standard_normal(shape)
    with jax.enable_x64(True):
      fn = lambda a: spectral.filter_matrices_and_spectrum(a, [spectral.soft_threshold], 0.5)
      (lam, (out,)), (dlam, _) = jax.jvp(fn, (jnp.asarray(x),), (jnp.asarray(dx),))
    u, sigma, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(lam, sigma[:, ::-1] ** 2, atol=1e-12)
    np.testing.assert_allclose(out, (u * np.maximum(sigma - 0.5, 0)[:, None, :]) @ vt, atol=1e-12)
    dsigma_sq = 2 * sigma * np.einsum("bak,bac,bck->bk", u, dx, np.swapaxes(vt, -1, -2))
    np.testing.assert_allclose(dlam, dsigma_sq[:, ::-1], atol=1e-10)
